"""Zero-shot: the classifier equals open_clip's; accuracy by hand and against the full-logits top-k."""

import pytest
import torch

from dmlscale.eval import zero_shot_accuracy, zero_shot_classifier

open_clip = pytest.importorskip("open_clip")


class BagOfTokensTextTower(torch.nn.Module):
    """A small real text encoder over open_clip's tokens: mean token embedding, then a linear map."""

    def __init__(self, vocab_size: int, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=0)
        self.proj = torch.nn.Linear(dim, dim)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.proj(self.embed(tokens))
        return torch.nn.functional.normalize(features, dim=-1) if normalize else features


CLASSNAMES = ["dog", "cat", "golden retriever", "car", "tree"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of a {}."]


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_classifier_equals_open_clip(batch_size):
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    model = BagOfTokensTextTower(tokenizer.vocab_size)
    expected = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSNAMES, TEMPLATES, num_classes_per_batch=2)
    ours = zero_shot_classifier(model.encode_text, tokenizer, CLASSNAMES, TEMPLATES, batch_size=batch_size)
    assert ours.shape == (16, len(CLASSNAMES))
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    callables = [lambda c, t=t: t.format(c) for t in TEMPLATES]  # callables and "{c}" work too
    torch.testing.assert_close(zero_shot_classifier(model.encode_text, tokenizer, CLASSNAMES, callables), ours)
    braces = [t.replace("{}", "{c}") for t in TEMPLATES]
    torch.testing.assert_close(zero_shot_classifier(model.encode_text, tokenizer, CLASSNAMES, braces), ours)


def test_accuracy_by_hand_with_a_tie():
    """Classifier = the 3 unit axes. Ranks of the true class: 1; 3; 2 (tie with class 0, lower index
    first); 1 -> top1 2/4, top2 3/4, top3 and top5 (k >= C) 1."""
    classifier = torch.eye(3)
    images = torch.tensor([[3.0, 2, 1], [3, 2, 1], [1, 1, 0], [0, 0, 5]])
    labels = torch.tensor([0, 2, 1, 2])
    for chunk_size in (1, 3, 10):
        result = zero_shot_accuracy(images, labels, classifier, topk=(1, 2, 3, 5), chunk_size=chunk_size)
        assert result == {"top1": 0.5, "top2": 0.75, "top3": 1.0, "top5": 1.0}


def test_accuracy_equals_full_logits_topk():
    """Against the unchunked formula (open_clip's zero_shot.accuracy, which fails to run with numpy 2)."""
    gen = torch.Generator().manual_seed(0)
    classifier = torch.nn.functional.normalize(torch.randn(12, 40, generator=gen), dim=0)
    labels = torch.randint(0, 40, (300,), generator=gen)
    images = torch.nn.functional.normalize(classifier.t()[labels] + 0.6 * torch.randn(300, 12, generator=gen), dim=1)
    logits = 100.0 * images @ classifier
    expected = {f"top{k}": (logits.topk(k, dim=1).indices == labels[:, None]).any(1).double().mean().item()
                for k in (1, 5)}
    ours = zero_shot_accuracy(images, labels, classifier, chunk_size=64)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert 0.0 < ours["top1"] < ours["top5"] < 1.0


def test_bad_inputs_name_the_value():
    classifier = torch.eye(3)
    with pytest.raises(ValueError, match=r"labels\[1\]=3 is outside \[0, 3\)"):
        zero_shot_accuracy(torch.randn(2, 3), torch.tensor([0, 3]), classifier)
    with pytest.raises(ValueError, match=r"classifier has shape \(3, 3\)"):
        zero_shot_accuracy(torch.randn(2, 4), torch.tensor([0, 1]), classifier)
    with pytest.raises(ValueError, match=r"got \(2, 1\)"):
        zero_shot_accuracy(torch.randn(2, 3), torch.tensor([[0], [1]]), classifier)
    with pytest.raises(ValueError, match="topk must be a positive int, got 0"):
        zero_shot_accuracy(torch.randn(2, 3), torch.tensor([0, 1]), classifier, topk=(0,))
    with pytest.raises(ValueError, match="classnames"):
        zero_shot_classifier(lambda t: t, lambda p: p, [], ["{}"])
    with pytest.raises(ValueError, match="templates"):
        zero_shot_classifier(lambda t: t, lambda p: p, ["dog"], "a photo of a {}.")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        zero_shot_classifier(lambda t: t, lambda p: p, ["dog"], ["{}"], batch_size=0)
