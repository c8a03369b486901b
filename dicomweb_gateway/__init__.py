"""dicomweb_gateway: the DICOMweb (PS3.18) HTTP edge: STOW-RS, QIDO-RS, WADO-RS."""
