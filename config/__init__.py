"""Configuration: one typed `Settings` object built from the environment and `.env`."""

from config.settings import FIELDS, Secret, Settings, SettingsError, load_settings

__all__ = ["FIELDS", "Secret", "Settings", "SettingsError", "load_settings"]
