"""feedd: a self-hosted SFTP ingestion daemon."""

__version__ = "0.1.0"
