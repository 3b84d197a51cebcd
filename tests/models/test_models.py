"""Models: our open_clip configs, local pretrained weights, the MiniLM text tower, image embedders."""

from __future__ import annotations

import pytest
import torch

from dmlscale.models import (build_embedder, build_model, build_open_clip, build_tower_clip, minilm_directory,
                             our_config_names, resolve_model_config, TransformersTextTower)
from dmlscale.train.export import write_export


@pytest.mark.parametrize("name", our_config_names())
def test_our_configs_build_with_shape_one_logit_parameters(name):
    torch.manual_seed(0)
    model = build_model("open_clip", name, init_logit_bias=-10.0)
    tokenizer_ids = torch.randint(1, 49408, (3, 16))
    out = model(image=torch.randn(3, 3, 32, 32), text=tokenizer_ids)
    dim = resolve_model_config(name)["embed_dim"]
    assert out["image_features"].shape == out["text_features"].shape == (3, dim)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(3))
    assert model.logit_scale.shape == model.logit_bias.shape == (1,)  # DeepSpeed rejects 0-dim parameters
    assert out["logit_bias"].item() == -10.0 and out["logit_scale"].item() == pytest.approx(1 / 0.07)


def test_pretrained_weights_come_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = build_open_clip("dml-tiny-vit")
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    torch.manual_seed(2)
    loaded = build_open_clip("dml-tiny-vit", pretrained=str(tmp_path / "weights.pt"))
    fresh = build_open_clip("dml-tiny-vit")
    assert all(torch.equal(p, loaded.state_dict()[n]) for n, p in source.state_dict().items())
    assert not torch.equal(fresh.visual.conv1.weight, loaded.visual.conv1.weight)
    with pytest.raises(ValueError, match="missing.pt"):
        build_open_clip("dml-tiny-vit", pretrained=str(tmp_path / "missing.pt"))


def test_unknown_names_raise_value_errors():
    import open_clip

    assert resolve_model_config("ViT-B-32") == open_clip.get_model_config("ViT-B-32")
    with pytest.raises(ValueError, match="'no-such-model'"):
        build_open_clip("no-such-model")
    with pytest.raises(ValueError, match="'no-such-family'"):
        build_model("no-such-family", "dml-tiny-vit")
    with pytest.raises(ValueError, match="'keras'"):
        build_embedder("resnet18", source="keras")


def test_minilm_tower_matches_sentence_transformers():
    """Mean pooling over real tokens, checked against sentence-transformers' own MiniLM pipeline."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    directory = minilm_directory()
    assert (directory / "model.safetensors").is_file()
    tower = TransformersTextTower(directory).eval()
    texts = ["a handwritten seven", "the digit zero on a white page, drawn quickly"]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(tower(tower.tokenize(texts, context_length=32)), dim=-1)
    reference = sentence_transformers.SentenceTransformer(str(directory), device="cpu")
    theirs = torch.as_tensor(reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True))
    assert (ours - theirs).abs().max().item() < 1e-5


def test_frozen_text_tower_trains_only_its_projection_and_stays_in_eval():
    tower = TransformersTextTower(minilm_directory(), output_dim=8, freeze=True).train()
    assert not tower.transformer.training and tower.training
    assert {n for n, p in tower.named_parameters() if p.requires_grad} == {"proj.weight"}
    with pytest.raises(ValueError, match="config.json"):
        TransformersTextTower("/nonexistent/tower")


def test_tower_clip_forward_and_export_loads_in_transformers(tmp_path):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = build_tower_clip("dml-tiny-vit", init_logit_bias=-5.0)
    ids = model.text.tokenize(["one", "two three"], context_length=12)
    out = model(image=torch.randn(2, 3, 32, 32), text=ids)
    assert out["image_features"].shape == out["text_features"].shape == (2, 32)
    assert model.logit_scale.shape == model.logit_bias.shape == (1,)
    with torch.no_grad():  # make the exported tower differ from the packaged one
        model.text.transformer.embeddings.word_embeddings.weight.add_(0.5)
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    out_dir = write_export(state, model.dmlscale_spec, tmp_path / "export")
    reloaded = AutoModel.from_pretrained(out_dir / "text_tower", local_files_only=True)
    for name, tensor in model.text.transformer.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert torch.load(out_dir / "model.bin").keys() == state.keys()


@pytest.mark.parametrize("trunk,source", [("dml-tiny-rn", "open_clip"), ("resnet18", "timm")])
def test_embedder_projects_trunk_features(trunk, source):
    torch.manual_seed(0)
    model = build_embedder(trunk, source=source, embedding_dim=16, normalize=True)
    emb = model(torch.randn(4, 3, 32, 32))
    assert emb.shape == (4, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-6)
    with pytest.raises(ValueError, match="embedding_dim"):
        build_embedder(trunk, source=source, embedding_dim=0)
