"""torch.hub entrypoints: ``torch.hub.load(REPO_DIR, 'smpconv_t', source='local', num_classes=10)``.

One entrypoint per registered model (``timm.list_models('smpconv_*')``, read from the model families' descriptions),
each ``timm.create_model(name, pretrained=pretrained, **kwargs)``; keyword arguments are the model's kwargs (its
docstring lists them), and ``tag=`` picks pretrained weights, e.g. the shipped digits weights:
``torch.hub.load(REPO_DIR, 'smpconv_tcn_mnist', source='local', pretrained=True, tag='digits')``.
"""
from __future__ import annotations

import inspect as _inspect

import timm as _timm

from smpconv_models.models import FAMILIES as _FAMILIES

dependencies = ['torch', 'timm', 'safetensors']


def _entrypoint(name: str, family):
    def entrypoint(pretrained: bool = False, tag: str | None = None, **kwargs):
        return _timm.create_model(f'{name}.{tag}' if tag else name, pretrained=pretrained, **kwargs)

    tags = [t.split('.', 1)[1] for t in _timm.list_pretrained(f'{name}.*')]
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = '\n\n'.join([
        _inspect.cleandoc(_timm.models.model_entrypoint(name).__doc__ or name),
        f'Input: {family.input_doc}. Common kwargs: {", ".join(family.common_kwargs)}; architecture kwargs: '
        f'{", ".join(family.arch_kwargs)}.',
        f"Pretrained weights: ``pretrained=True, tag=...`` with tag {', '.join(repr(t) for t in tags)}." if tags
        else 'No pretrained weights are registered (load a checkpoint with ``local-dir:`` / ``hf-hub:`` in timm).',
    ])
    return entrypoint


globals().update({name: _entrypoint(name, family) for family in _FAMILIES for name in family.variants})
