"""``python -m smpconv_models.bench``: see the package docstring."""
from .cli import main

if __name__ == '__main__':
    raise SystemExit(main())
