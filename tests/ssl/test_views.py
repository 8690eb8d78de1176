import pytest
import torch

from nanomorph.models.dihedral import SYMMETRIES, turn
from nanomorph.ssl.views import make_view_transform


def two_views(batch: torch.Tensor, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of every image of a (B, 1, H, W) batch, the transform called image by image (as view_data does)."""
    return (torch.stack([transform(image) for image in batch]), torch.stack([transform(image) for image in batch]))


def test_two_views_shapes_and_range():
    batch = torch.rand(5, 1, 48, 40)
    v1, v2 = two_views(batch, make_view_transform(32))
    assert v1.shape == v2.shape == (5, 1, 32, 32)
    assert v1.dtype == torch.float32


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_views_stay_in_unit_range_at_the_extremes(value):
    # Bright jitter of a white image and contrast jitter of a black one must not leave [0, 1].
    batch = torch.full((16, 1, 32, 32), value)
    batch[:, :, ::2] = 1.0 - value
    v1, v2 = two_views(batch, make_view_transform(24, jitter_p=1.0, brightness=0.9, contrast=0.9))
    assert v1.min() >= 0 and v1.max() <= 1 and v2.min() >= 0 and v2.max() <= 1


def test_every_image_and_view_gets_its_own_random_parameters():
    ramp = torch.linspace(0, 1, 64).expand(64, 64)
    batch = ramp.expand(8, 1, 64, 64).clone()  # eight identical images
    torch.manual_seed(0)
    v1, v2 = two_views(batch, make_view_transform(32))
    flat = torch.cat([v1, v2]).flatten(1)
    distinct = {tuple(row.round(decimals=4).tolist()) for row in flat}
    assert len(distinct) == 16


def test_seeded_views_are_reproducible():
    batch = torch.rand(4, 1, 40, 40)
    transform = make_view_transform(32)
    torch.manual_seed(7)
    first = two_views(batch, transform)
    torch.manual_seed(7)
    again = two_views(batch, transform)
    torch.manual_seed(8)
    other = two_views(batch, transform)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_crop_covers_a_quarter_to_half_of_the_side():
    # On a horizontal ramp 0..1 (no flip, no jitter) a view spans a ramp interval as wide as its crop side.
    side = 128
    ramp = torch.linspace(0, 1, side).expand(1, side, side).contiguous()
    transform = make_view_transform(32, crop_side=(0.25, 0.5), flip_p=0.0, jitter_p=0.0)
    torch.manual_seed(0)
    spans = torch.tensor([(v := transform(ramp))[0, 0, -1] - v[0, 0, 0] for _ in range(200)])
    assert spans.min() > 0.25 - 0.03 and spans.max() < 0.5 + 0.01
    assert spans.max() - spans.min() > 0.15  # the side fraction varies across the whole range


def test_rejects_invalid_crop_side():
    with pytest.raises(ValueError):
        make_view_transform(32, crop_side=(0.5, 0.25))


def _orientations(views: torch.Tensor, image: torch.Tensor) -> set[int]:
    """Which of the 8 symmetries of `image` (`turn(image, flip, k)`, numbered 4 * flip + k) the views are."""
    return {4 * flip + k for view in views for flip, k in SYMMETRIES if torch.allclose(view, turn(image, flip, k))}


def test_dihedral_views_reach_all_eight_symmetries_and_the_paper_views_only_two():
    # Full-side crops and no jitter: a view is then exactly the image under some symmetry of the square.
    image = torch.zeros(1, 16, 16)
    image[0, 2, 3:9] = 1.0  # an L-shaped mark, different under each of the 8 symmetries
    image[0, 2:12, 3] = 1.0
    batch = image.expand(64, 1, 16, 16).clone()
    torch.manual_seed(0)
    paper, _ = two_views(batch, make_view_transform(16, crop_side=(1.0, 1.0), jitter_p=0.0))
    torch.manual_seed(0)
    em, _ = two_views(batch, make_view_transform(16, crop_side=(1.0, 1.0), jitter_p=0.0, dihedral=True))
    assert _orientations(paper, image) == {0, 4}
    assert _orientations(em, image) == set(range(8))


def test_blur_and_noise_change_the_views_and_stay_in_range():
    batch = torch.rand(8, 1, 32, 32)
    torch.manual_seed(3)
    plain, _ = two_views(batch, make_view_transform(32, crop_side=(1.0, 1.0), flip_p=0.0, jitter_p=0.0))
    torch.manual_seed(3)
    blurred, _ = two_views(batch, make_view_transform(32, crop_side=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                                                      blur_p=1.0, blur_sigma=2.0))
    # Blur removes pixel-to-pixel variation of a white-noise image.
    assert blurred.diff(dim=-1).abs().mean() < 0.7 * plain.diff(dim=-1).abs().mean()
    torch.manual_seed(3)
    noisy, _ = two_views(batch, make_view_transform(32, crop_side=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                                                    noise_std=0.2))
    assert not torch.allclose(noisy, plain)
    assert noisy.min() >= 0 and noisy.max() <= 1


@pytest.mark.parametrize("kwargs", [{"blur_p": 1.5}, {"blur_sigma": 0.0}, {"noise_std": -0.1}])
def test_bad_augmentation_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        make_view_transform(32, **kwargs)
