"""The SFTP front door: asyncssh server with per-connection auth, jailed spaces, and drop detection."""
