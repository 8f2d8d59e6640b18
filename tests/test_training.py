"""Tests of kdlearn.models and kdlearn.training: the nets, the training loop (deterministic, really
learning, really using the teacher), the input jitter, and the measurements (errors, accuracy,
agreement, ECE) against hand-computed values."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from kdlearn import data, models, training

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return data.digits()


@pytest.fixture(scope="module")
def small_train(digits):
    """300 training digits: enough to learn something in a few epochs, fast."""
    return data.Split(digits.train.x[:300], digits.train.y[:300])


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


# --- models ----------------------------------------------------------------------------------


def test_mlp_layers_and_output_shape():
    net = models.mlp(64, (20, 10), num_classes=7, dropout=0.3)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 20), (20, 10), (10, 7)]
    assert sum(isinstance(m, nn.ReLU) for m in net) == 2
    assert [m.p for m in net if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    assert net(torch.zeros(5, 64)).shape == (5, 7)
    assert not any(isinstance(m, nn.Dropout) for m in models.mlp(64, (20, 10)))


def test_mlp_seed_gives_the_same_net_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = models.mlp(64, (16,), seed=3), models.mlp(64, (16,), seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = models.mlp(64, (16,), seed=4)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_widths_by_dataset_and_role():
    assert models.widths("mnist", "teacher") == (1200, 1200)
    assert models.widths("mnist", "big_student") == (800, 800)
    assert models.widths("mnist", "small_student") == (30, 30)
    digits_widths = [models.widths("digits", role)[0] for role in ("teacher", "big_student", "small_student")]
    assert digits_widths == sorted(digits_widths, reverse=True)
    with pytest.raises(ValueError, match="data"):
        models.widths("cifar", "teacher")
    with pytest.raises(ValueError, match="role"):
        models.widths("digits", "ensemble")


@pytest.mark.parametrize("kwargs", [dict(in_features=0), dict(hidden=(10, 0)), dict(dropout=1.0)])
def test_mlp_rejects_bad_arguments(kwargs):
    arguments = dict(in_features=64, hidden=(10,), dropout=0.0) | kwargs
    with pytest.raises(ValueError):
        models.mlp(arguments.pop("in_features"), arguments.pop("hidden"), **arguments)


# --- the training loop -----------------------------------------------------------------------


def test_cnn_blocks_shapes_and_output(digits):
    net = models.cnn(channels=(4, 6), embedding=12, num_classes=7, seed=0)
    assert [name for name, _ in net.named_children()] == ["image", "block1", "block2", "embed", "classifier"]
    x = digits.test.x[:5]
    assert net.block1(net.image(x)).shape == (5, 4, 8, 8)
    assert net[:3](x).shape == (5, 6, 4, 4) and net[:4](x).shape == (5, 12)
    assert net(x).shape == (5, 7)
    convolution = net.block1[0]   # the first block is a plain 3x3 convolution of the image, padded with zeros
    expected = torch.nn.functional.conv2d(x.view(5, 1, 8, 8), convolution.weight, convolution.bias, padding=1).relu()
    assert torch.allclose(net.block1(net.image(x)), expected)


def test_cnn_seed_dropout_and_bad_arguments():
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a, b = models.cnn(seed=3), models.cnn(seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(isinstance(m, nn.Dropout) for m in models.cnn(dropout=0.3).modules())
    for kwargs, message in [(dict(channels=(4,)), "channels"), (dict(embedding=0), "embedding"),
                            (dict(image_shape=(7, 8)), "image_shape"), (dict(dropout=1.0), "dropout")]:
        with pytest.raises(ValueError, match=message):
            models.cnn(**kwargs)


def test_cnn_learns_the_digits(small_train, digits):
    net = models.cnn(channels=(4, 8), embedding=16, seed=0)
    before = training.test_errors(net, digits.test)
    training.train(net, small_train, epochs=15, lr=1e-2, progress=False)
    assert training.test_errors(net, digits.test) < min(before, 100)


def test_same_seed_gives_identical_weights_and_errors(small_train, digits):
    runs = []
    for _ in range(2):
        net = models.mlp(64, (32, 32), dropout=0.2, seed=0)  # dropout: the global RNG is seeded too
        history = training.train(net, small_train, epochs=3, jitter=1, seed=5, progress=False)
        runs.append((weights(net), history.loss, training.test_errors(net, digits.test)))
    (w1, loss1, err1), (w2, loss2, err2) = runs
    assert all(torch.equal(p, q) for p, q in zip(w1, w2))
    assert loss1 == loss2 and err1 == err2

    other = models.mlp(64, (32, 32), dropout=0.2, seed=0)
    training.train(other, small_train, epochs=3, jitter=1, seed=6, progress=False)
    assert not all(torch.equal(p, q) for p, q in zip(w1, weights(other)))


def test_train_leaves_the_global_rng_alone(small_train):
    state = torch.get_rng_state()
    training.train(models.mlp(64, (16,), dropout=0.5, seed=0), small_train, epochs=1, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_training_lowers_the_loss_and_the_errors(small_train, digits):
    net = models.mlp(64, (32, 32), seed=0)
    before = training.test_errors(net, digits.test)
    history = training.train(net, small_train, epochs=15, lr=1e-2, progress=False)
    assert len(history.loss) == 15
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert training.test_errors(net, digits.test) < 0.5 * before
    assert not net.training  # left in eval mode


class ConstantLogits(nn.Module):
    """A teacher that says the same thing about every image."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("value", torch.tensor(logits))

    def forward(self, x):
        return self.value.expand(len(x), -1)


def test_kd_with_alpha_1_pulls_the_student_to_the_teacher_not_the_labels(small_train):
    # The labels cover all ten classes; the teacher always says "mostly 7, a little 2".
    teacher = ConstantLogits([0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0])
    target = torch.softmax(teacher.value / 2.0, dim=-1)
    student = models.mlp(64, (16,), seed=0)
    training.train(student, small_train, teacher=teacher, loss="kd", T=2.0, alpha=1.0, epochs=15, lr=1e-2,
                   progress=False)
    assert torch.equal(training.predictions(student, small_train), torch.full((300,), 7))
    tempered = torch.softmax(training.logits(student, small_train.x) / 2.0, dim=-1)
    assert torch.allclose(tempered.mean(0), target, atol=0.02)

    from_labels = models.mlp(64, (16,), seed=0)
    training.train(from_labels, small_train, teacher=teacher, loss="kd", T=2.0, alpha=0.0, epochs=15, lr=1e-2,
                   progress=False)
    assert len(training.predictions(from_labels, small_train).unique()) == 10


class Recorder(nn.Module):
    """Wraps a net and records, per call, its input, its mode and whether gradients were on."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x):
        self.calls.append((x.clone(), self.training, torch.is_grad_enabled()))
        return self.net(x)


@pytest.mark.parametrize("jitter", [0, 1])
def test_teacher_runs_in_eval_mode_without_gradient_on_the_students_images(small_train, jitter):
    teacher = Recorder(models.mlp(64, (16,), dropout=0.5, seed=1))
    teacher.train()
    student = Recorder(models.mlp(64, (8,), seed=0))
    training.train(student, small_train, teacher=teacher, loss="kd", epochs=2, batch_size=100, jitter=jitter,
                   progress=False)
    assert all(not mode and not grad for _, mode, grad in teacher.calls)
    assert all(mode and grad for _, mode, grad in student.calls)
    seen_by_teacher = torch.cat([x for x, _, _ in teacher.calls])
    seen_by_student = torch.cat([x for x, _, _ in student.calls])
    if jitter:  # the same jittered batch for both, batch by batch
        assert len(teacher.calls) == len(student.calls) == 6
        assert torch.equal(seen_by_teacher, seen_by_student)
        assert not torch.equal(seen_by_student[:300].sort(0).values, small_train.x.sort(0).values)
    else:  # the same images every epoch: the teacher's logits are computed once, for all of them
        assert len(teacher.calls) == 1 and torch.equal(seen_by_teacher, small_train.x)
        assert torch.equal(seen_by_student[:300].sort(0).values, small_train.x.sort(0).values)


def test_a_loss_of_ones_own_gets_student_teacher_and_labels(small_train):
    teacher = ConstantLogits([1.0] * 10)
    seen = []

    def loss(student_logits, teacher_logits, labels):
        seen.append((student_logits.shape, teacher_logits.shape, labels.shape))
        return ((student_logits - teacher_logits) ** 2).mean()

    training.train(models.mlp(64, (8,), seed=0), small_train, teacher=teacher, loss=loss, epochs=1,
                   batch_size=150, progress=False)
    assert seen == [((150, 10), (150, 10), (150,))] * 2


class WithHidden(nn.Module):
    """An MLP that returns (logits, {"hidden": its hidden layer}): a model with a structured output."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, x):
        hidden = self.net[:2](x)
        return self.net[2:](hidden), {"hidden": hidden}


@pytest.mark.parametrize("jitter", [0, 1])
def test_structured_outputs_reach_the_loss_batch_by_batch(small_train, jitter):
    teacher = WithHidden(models.mlp(64, (16,), seed=1))
    seen = []

    def loss(student_output, teacher_output, labels):
        (s_logits, s_features), (t_logits, t_features) = student_output, teacher_output
        seen.append(t_features["hidden"])
        # the teacher's output for exactly the images of this batch, cached or not
        with torch.no_grad():
            expected = teacher.net[:2](last_batch[-1])
        assert torch.allclose(t_features["hidden"], expected, atol=1e-6)
        assert s_logits.shape == t_logits.shape == (len(labels), 10)
        return ((s_features["hidden"][:, :4] - t_features["hidden"][:, :4]) ** 2).mean()

    last_batch = []
    student = WithHidden(models.mlp(64, (8,), seed=0))
    original_forward = student.forward
    student.forward = lambda x: last_batch.append(x) or original_forward(x)
    before = weights(student)
    training.train(student, small_train, teacher=teacher, loss=loss, epochs=1, batch_size=100, jitter=jitter,
                   progress=False)
    assert len(seen) == 3 and all(f.shape == (100, 16) for f in seen)
    assert any(not torch.equal(a, b) for a, b in zip(before, weights(student)))


def test_select_takes_the_rows_of_every_tensor_in_a_structure():
    output = (torch.arange(6).view(3, 2), {"a": torch.arange(3), "b": [torch.arange(3) * 10]})
    picked = training.select(output, torch.tensor([2, 0]))
    assert torch.equal(picked[0], torch.tensor([[4, 5], [0, 1]]))
    assert torch.equal(picked[1]["a"], torch.tensor([2, 0])) and torch.equal(picked[1]["b"][0], torch.tensor([20, 0]))
    with pytest.raises(ValueError, match="tuple, list or dict of tensors; got str"):
        training.select("logits", torch.tensor([0]))


@pytest.mark.parametrize("loss", ["ce", "kd"])
def test_ce_and_kd_need_models_that_return_logits(small_train, loss):
    teacher = models.mlp(64, (8,), seed=1)
    with pytest.raises(ValueError, match="need a model that returns logits.*pass a loss callable"):
        training.train(WithHidden(models.mlp(64, (8,), seed=0)), small_train, teacher=teacher, loss=loss, epochs=1,
                       progress=False)


@pytest.mark.parametrize("kwargs, name", [
    (dict(loss="mse"), "loss"),
    (dict(loss="kd"), "teacher"),
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(batch_size=0), "batch_size"),
    (dict(jitter=-1), "jitter"),
])
def test_train_rejects_bad_arguments(small_train, kwargs, name):
    with pytest.raises(ValueError, match=name):
        training.train(models.mlp(64, (8,)), small_train, progress=False, **kwargs)


# --- jitter ----------------------------------------------------------------------------------


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """image moved dy pixels down and dx right, zeros shifted in: an independent reference."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def test_shifted_reference_moves_down_and_right():
    image = np.zeros((8, 8))
    image[2, 3] = 1.0
    assert shifted(image, 1, -1)[3, 2] == 1.0 and shifted(image, 1, -1).sum() == 1.0


@pytest.mark.parametrize("max_shift", [1, 2])
def test_jitter_shifts_each_image_by_at_most_max_shift_pixels(digits, max_shift):
    x = digits.train.x[:400]
    out = training.jitter_images(x, max_shift, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts_used = set()
    for image, moved in zip(x.view(-1, 8, 8).numpy(), out.view(-1, 8, 8).numpy()):
        matches = [(dy, dx) for dy, dx in itertools.product(range(-max_shift, max_shift + 1), repeat=2)
                   if np.array_equal(shifted(image, dy, dx), moved)]
        assert matches, "an output that is no shift of its input"
        shifts_used.update(matches)
    assert len(shifts_used) == (2 * max_shift + 1) ** 2  # every shift occurs


def test_jitter_keeps_a_centred_dot_whole_and_is_seeded():
    dots = torch.zeros(50, 64)
    dots[:, 3 * 8 + 4] = 1.0  # row 3, column 4: 1 pixel from every edge it could leave by
    out = training.jitter_images(dots, 1, torch.Generator().manual_seed(1))
    assert torch.equal(out.sum(1), torch.ones(50))
    rows, cols = out.view(50, 8, 8).nonzero()[:, 1:].T
    assert rows.min() == 2 and rows.max() == 4 and cols.min() == 3 and cols.max() == 5
    assert torch.equal(out, training.jitter_images(dots, 1, torch.Generator().manual_seed(1)))
    assert torch.equal(training.jitter_images(dots, 0), dots)


def test_jitter_needs_square_images():
    with pytest.raises(ValueError, match="square"):
        training.jitter_images(torch.zeros(2, 60), 1)


# --- measurements ----------------------------------------------------------------------------


def logits_split(rows, labels):
    """A split whose images are the logits themselves, for nn.Identity() as the model."""
    return SimpleNamespace(x=torch.tensor(rows, dtype=torch.float32), y=torch.tensor(labels))


def two_class(p):
    """Logits of a two-class net that puts probability p on class 0."""
    return [math.log(p), math.log(1.0 - p)]


def test_expected_calibration_error_by_hand():
    # Confidences 0.85, 0.85, 0.65, 0.62; right, wrong, right, right.
    split = logits_split([two_class(0.85), two_class(0.85), two_class(0.65), two_class(0.38)], [0, 1, 0, 1])
    # 10 bins: (0.8, 0.9] holds 0.85, 0.85 (accuracy 1/2): 2/4 * |0.5 - 0.85| = 0.175;
    # (0.6, 0.7] holds 0.65, 0.62 (accuracy 1): 2/4 * |1 - 0.635| = 0.1825.
    assert training.expected_calibration_error(nn.Identity(), split, bins=10) == pytest.approx(0.3575, abs=1e-6)
    # One bin: |accuracy 3/4 - mean confidence 0.7425|.
    assert training.expected_calibration_error(nn.Identity(), split, bins=1) == pytest.approx(0.0075, abs=1e-6)


def test_expected_calibration_error_is_0_when_confidence_matches_accuracy():
    # Four examples at confidence 0.75, three of them right.
    split = logits_split([two_class(0.75)] * 4, [0, 0, 0, 1])
    assert training.expected_calibration_error(nn.Identity(), split) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="bins"):
        training.expected_calibration_error(nn.Identity(), split, bins=0)


def test_errors_accuracy_and_agreement_by_hand():
    split = logits_split([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [1.0, 0.0, 1.5], [0.0, 2.0, 1.0]], [1, 1, 2, 2])
    teacher = nn.Identity()  # predicts 1, 0, 2, 1: two errors
    assert training.test_errors(teacher, split) == 2
    assert training.accuracy(teacher, split) == 0.5

    class Reversed(nn.Module):  # predicts 1, 2, 0, 1
        def forward(self, x):
            return x.flip(-1)

    assert torch.equal(training.predictions(Reversed(), split), torch.tensor([1, 2, 0, 1]))
    assert training.agreement(Reversed(), teacher, split) == 0.5
    assert training.agreement(teacher, teacher, split) == 1.0


def test_measurements_run_in_eval_mode_and_restore_the_mode(digits):
    net = models.mlp(64, (32,), dropout=0.5, seed=0)
    net.train()
    first = training.logits(net, digits.test.x)
    assert torch.equal(first, training.logits(net, digits.test.x))  # no dropout
    assert not first.requires_grad
    assert net.training
