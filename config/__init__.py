"""Default configuration and schemas shipped with mmcross (data files, no code).

``CONFIG_DIR`` is this folder: ``default.toml`` and the Avro/XML schemas live here.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"
