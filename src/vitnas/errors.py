"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class VitnasError(Exception):
    """A problem with the user's input (params, artifacts, data), not a bug."""


class ConfigError(VitnasError, ValueError):
    """A params.yaml value that is missing, unknown, of the wrong type or out of range."""


class DataError(VitnasError):
    """A dataset that is missing, corrupt or unusable."""


class ArtifactError(VitnasError):
    """A stage input artifact that is missing or malformed."""


class ArchError(VitnasError, ValueError):
    """An architecture description that cannot be built."""
