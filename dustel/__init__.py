"""dustel: control plane of the DUStel VoIP platform."""

__version__ = "0.1.0"
