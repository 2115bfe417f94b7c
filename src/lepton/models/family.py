"""The model families: what a stage's implementation is written for.

A stage registers one function per family it supports (``lepton.stages.register(Config,
family="decoder")``); the registry picks the function by the bundle's family and refuses, in one
line naming both, a stage that has none for it. Which family a model belongs to is said by its task
kind (``TaskKind.family``): a classifier's model is an ``encoder`` with a head, a generative kind's
is a ``decoder`` or an ``encoder-decoder`` by its config.

Adding a family: one ``register_family`` call here, the task kind that answers it, and the stages'
implementations for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton.core.registry import Registry


@dataclass(frozen=True)
class ModelFamily:
    name: str
    title: str  # in messages: "decoder-only models"


families: Registry[ModelFamily] = Registry("model family")


def register_family(family: ModelFamily) -> ModelFamily:
    families.add(family.name, family)
    return family


ENCODER = register_family(ModelFamily("encoder", "encoder models (a classification or tagging head)"))
DECODER = register_family(ModelFamily("decoder", "decoder-only models"))
ENCODER_DECODER = register_family(ModelFamily("encoder-decoder", "encoder-decoder models"))
