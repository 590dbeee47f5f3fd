"""Every default of osum, as YAML files: ``fit.yaml``, ``presets/``, ``stages/``. Installed as the package
``osum_configs``, so a wheel carries them; code finds them through `CONFIG_DIR`."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
