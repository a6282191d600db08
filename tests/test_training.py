"""ViT-FIQA training on a small in-memory identity data set built here, and checkpoint loading."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitfiqa.models import ViTFIQA, load_official_state_dict
from vitfiqa.options import TrainOptions
from vitfiqa.training import InMemoryDataset, MarginSoftmax, TrainingResult, certainty_ratio, train_vitfiqa


def identity_data(n_ids=8, per_id=80, seed=0):
    """Identities are smooth random patterns; each sample adds noise of a random strength, so some samples
    are much harder to recognise than others."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.randn(n_ids, 3, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    ids = torch.arange(n_ids).repeat_interleave(per_id)
    noise = torch.rand(len(ids), generator=g) ** 2 * 3.0  # most samples clean, a tail of hard ones
    x = protos[ids] + noise[:, None, None, None] * torch.randn(len(ids), 3, 32, 32, generator=g)
    perm = torch.randperm(len(ids), generator=g)
    return x[perm], ids[perm]


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def small_model():
    torch.manual_seed(0)
    return ViTFIQA(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_features=32)


def test_training_loss_falls_and_quality_tracks_cr(tmp_path):
    x, ids = identity_data()
    train, held = InMemoryDataset(x[:512], ids[:512]), (x[512:], ids[512:])
    model = small_model()
    opts = TrainOptions(epochs=12, batch_size=64, lr=2e-3, s=16.0, m=0.2, checkpoint_dir=tmp_path / "ckpt",
                        progress=False)
    run = train_vitfiqa(model, train, opts)
    assert isinstance(run, TrainingResult) and len(run.loss) == len(run.fr) == len(run.quality) == 12 * 8
    assert run.epochs == []  # no after_epoch given
    loss = np.array(run.loss)
    assert loss[-8:].mean() < 0.7 * loss[:8].mean()
    with torch.no_grad():
        emb, q = model(held[0])
        cr = certainty_ratio(run.head.cosine(emb), held[1])
    rho = spearman(q.reshape(-1).numpy(), cr.numpy())
    assert rho > 0.3, rho
    # Resume: asking for 13 epochs continues from the saved 12 and adds exactly one epoch of steps.
    more = train_vitfiqa(small_model(), train, opts.replace(epochs=13),
                         after_epoch=lambda epoch, model, head: {"head_rows": head.weight.shape[0]})
    assert len(more.loss) == len(run.loss) + 8
    assert more.epochs == [{"epoch": 13, "head_rows": 8}]
    assert isinstance(more.head, MarginSoftmax)


def test_certainty_ratio_definition():
    cos = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.5, 0.6]])
    cr = certainty_ratio(cos, torch.tensor([0, 1]))
    torch.testing.assert_close(cr, torch.tensor([0.9 / 1.3, 0.5 / 1.6]))


def test_load_official_state_dict(tmp_path):
    model = small_model()
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "ckpt.pt")
    other = small_model()
    load_official_state_dict(other, tmp_path / "ckpt.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[k], v)
    del state["module.head_qs.1.weight"]
    state["module.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing \['head_qs.1.weight'\], unexpected \['extra'\]"):
        load_official_state_dict(other, state)


@pytest.mark.parametrize("method", ["script", "trace"])
def test_export_torchscript_roundtrip(tmp_path, method):
    import vitfiqa
    from vitfiqa.models import export_torchscript

    model = small_model().eval()
    x = torch.randn(2, 3, 32, 32)
    path = export_torchscript(model, str(tmp_path / "m.pt"), method, example=x)
    m = vitfiqa.load(path, image_size=(32, 32))
    with torch.no_grad():
        expected = model(x)[1].reshape(-1).double()
    torch.testing.assert_close(m.score(x, methods=["vitfiqa"]).scores["vitfiqa"], expected, rtol=1e-5, atol=1e-7)


def test_export_trace_without_example_uses_the_contract_size(tmp_path):
    import vitfiqa
    from vitfiqa.models import export_torchscript

    model = small_model().eval()  # 32x32 input: the standard 112x112 example would not fit it
    path = export_torchscript(model, str(tmp_path / "m.pt"), "trace", input_contract={"image_size": 32})
    x = torch.randn(3, 3, 32, 32)  # another batch size than the tracing example's
    with torch.no_grad():
        expected = model(x)[1].reshape(-1).double()
    m = vitfiqa.load(path)
    assert m.image_size == (32, 32)
    torch.testing.assert_close(m.score(x, methods=["vitfiqa"]).scores["vitfiqa"], expected, rtol=1e-5, atol=1e-7)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_resume_from_a_malicious_checkpoint_runs_no_code(tmp_path):
    """A checkpoint folder can come from elsewhere: resume loads it with weights_only=True."""
    import pickle

    marker = tmp_path / "pwned"
    (tmp_path / "ckpt").mkdir()
    torch.save({"model": _Payload(marker)}, tmp_path / "ckpt" / "last.pt", pickle_module=pickle)
    x, ids = identity_data(n_ids=2, per_id=4)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train_vitfiqa(small_model(), InMemoryDataset(x, ids),
                      TrainOptions(epochs=1, checkpoint_dir=tmp_path / "ckpt", progress=False))
    assert not marker.exists()


@pytest.mark.parametrize("kwargs, message", [(dict(epochs=0), "epochs must be a positive integer"),
                                             (dict(epochs=1.5), "epochs must be a positive integer"),
                                             (dict(batch_size=0), "batch_size must be positive")])
def test_training_rejects_bad_epochs_and_batch_size(kwargs, message):
    x, ids = identity_data(n_ids=2, per_id=4)
    with pytest.raises(ValueError, match=message):
        train_vitfiqa(small_model(), InMemoryDataset(x, ids), TrainOptions(**{"epochs": 1, "progress": False, **kwargs}))


def test_old_training_keywords_still_work_with_a_deprecation_warning():
    x, ids = identity_data(n_ids=2, per_id=4)
    with pytest.warns(DeprecationWarning, match=r"epochs= is deprecated: pass options=TrainOptions\(epochs=\.\.\.\)"):
        with pytest.raises(ValueError, match="epochs must be a positive integer"):
            train_vitfiqa(small_model(), InMemoryDataset(x, ids), epochs=0, progress=False)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        train_vitfiqa(small_model(), InMemoryDataset(x, ids), epoch=1)
