"""etl: keeps a Klaviyo account in step with an Intercom workspace."""

__version__ = "0.1.0"
