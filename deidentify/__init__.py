"""De-identified copies of studies: PS3.15 Annex E Basic Application Level
Confidentiality Profile with the options chosen per request (profile: the
table; dataset: the actions on one data set; copy: studies into a target
tenant or a zip stream; service: the gRPC DeidentifyService)."""
