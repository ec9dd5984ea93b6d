"""archiver: disconnect-driven dialog archiving over Server-Sent Events."""

__version__ = "0.1.0"
