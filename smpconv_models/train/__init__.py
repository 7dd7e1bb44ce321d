"""Training and fine-tuning (``train.py``): configuration, data, model building, the loop and checkpoints."""
from .config import TrainConfig, build_parser, parse_config
from .loop import TrainingError, evaluate
from .runner import run

__all__ = ['TrainConfig', 'build_parser', 'parse_config', 'run', 'evaluate', 'TrainingError', 'main']


def main(argv: list[str] | None = None) -> int:
    """The ``train.py`` command line; returns the exit code."""
    from .cli import main as _main

    return _main(argv)
