"""Whether the Hugging Face Hub may be asked for files: the one reading of HF_HUB_OFFLINE for the whole package."""
import os


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set to anything but 0 / false / no / off (or empty): load local files only.
    The app sets it by default, since the shipped model is on disk."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")
