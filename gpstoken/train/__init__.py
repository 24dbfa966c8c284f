"""Training (``pip install gpstoken[train]``): tokenizer, layout generator, texture generator.

Command line (CPU, one GPU, or many GPUs / nodes through ``accelerate launch``)::

    gpstoken train tokenizer --config examples/configs/tiny_tokenizer.json --out runs/tok
    gpstoken train layout    --config examples/configs/tiny_layout.json    --out runs/layout
    gpstoken train texture   --config examples/configs/tiny_texture.json   --out runs/texture
    accelerate launch --num_processes 8 -m gpstoken.train.cli tokenizer --config ...

Python::

    from gpstoken.train import TokenizerTrainConfig, train_tokenizer
    summary = train_tokenizer(TokenizerTrainConfig.from_json("cfg.json"), "runs/tok")
"""
from .common import RunConfig, require_train_deps
from .data import OFFLINE_CLASSES, OFFLINE_HELDOUT, DataConfig
from .generator_trainer import GeneratorTrainConfig, GeneratorTrainer, train_generator
from .tokenizer_trainer import TokenizerTrainConfig, TokenizerTrainer, export_tokenizer, train_tokenizer

__all__ = [
    "DataConfig", "GeneratorTrainConfig", "GeneratorTrainer", "OFFLINE_CLASSES", "OFFLINE_HELDOUT", "RunConfig",
    "TokenizerTrainConfig", "TokenizerTrainer", "export_tokenizer", "require_train_deps", "train_generator",
    "train_tokenizer",
]
