"""The version of the server, as the console and the image name it."""

VERSION = "0.1.0"
