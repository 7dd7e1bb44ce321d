"""Train or fine-tune an smpconv model: ``python train.py --help``. Runs under ``accelerate launch`` too."""
from smpconv_models.train import main

if __name__ == '__main__':
    raise SystemExit(main())
