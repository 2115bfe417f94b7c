"""The layered layout's contracts: one stage registry keyed by config and model family, the
families a task kind's models belong to. (The import graph without cycles is
``scripts/import_graph.py``, which .ci/run runs.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lepton.core.errors import StageError, UnknownNameError
from lepton.stages import configs, handler_for, register, stage_kinds_for
from lepton.stages.base import handlers
from lepton.tasks import kind_of


def _model(encoder_decoder: bool) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=encoder_decoder))


def test_a_stage_without_an_implementation_for_a_family_is_refused_naming_both() -> None:
    config = configs.get("trim_vocab").model_validate({"kind": "trim_vocab"})
    with pytest.raises(StageError) as err:
        handler_for(config, "decoder", "stages.2")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("stages.2: trim_vocab is not implemented for decoder-only models")
    assert "(it is for: encoder)" in message


def test_pretrain_on_an_encoder_decoder_is_refused_by_the_registry() -> None:
    config = configs.get("pretrain").model_validate({"kind": "pretrain", "text": {"path": "t.txt"}})
    with pytest.raises(StageError, match="pretrain is not implemented for encoder-decoder models"):
        handler_for(config, "encoder-decoder")
    drop = configs.get("drop_layers").model_validate({"kind": "drop_layers", "keep": [0]})
    assert len({handler_for(drop, f) for f in ("encoder", "decoder", "encoder-decoder")}) == 3


def test_each_family_has_its_own_implementation_and_duplicates_are_refused() -> None:
    cls = configs.get("prune")
    with pytest.raises(ValueError, match="already has an implementation for encoder models"):
        register(cls)(lambda bundle, config, ctx: bundle)
    assert handlers[(cls, "encoder")] is not handlers[(cls, "decoder")]
    with pytest.raises(UnknownNameError, match="did you mean 'decoder'"):
        register(cls, family="decodr")


def test_task_kinds_name_the_family_of_their_models() -> None:
    assert kind_of("sequence_classification").family(_model(False)) == "encoder"
    assert kind_of("generation").family(_model(False)) == "decoder"
    assert kind_of("generation").family(_model(True)) == "encoder-decoder"
    assert kind_of("language_modeling").families == ("decoder", "encoder-decoder")


def test_a_recipe_may_hold_the_stages_of_its_kinds_families() -> None:
    encoder = set(stage_kinds_for(("encoder",)))
    generative = set(stage_kinds_for(kind_of("generation").families))
    assert {"trim_vocab", "multitask", "quantize_embeddings"} <= encoder - generative
    assert {"finetune", "pretrain", "distill", "drop_layers", "prune", "export", "quantize"} <= generative
