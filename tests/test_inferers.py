import pytest
import torch
from bundle.inferers import CpuBf16Inferer, FlipTTAInferer, cpu_has_native_bf16
from monai.inferers import SlidingWindowInferer


def asymmetric_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 5, padding=2)
    ).eval()


def symmetric_image() -> torch.Tensor:
    """(1, 3, 16, 16) image that every flip leaves unchanged."""
    torch.manual_seed(1)
    quarter = torch.rand(1, 3, 8, 8)
    half = torch.cat([quarter, quarter.flip(3)], dim=3)
    return torch.cat([half, half.flip(2)], dim=2)


def test_tta_of_a_pointwise_network_equals_the_plain_pass_on_any_image():
    network = torch.nn.Conv2d(3, 3, 1).eval()  # commutes with flips: TTA must align its outputs back
    image = torch.rand(2, 3, 12, 20)
    with torch.no_grad():
        torch.testing.assert_close(FlipTTAInferer()(image, network), network(image))


def test_tta_equals_the_plain_pass_on_a_symmetric_input_for_a_symmetric_output():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Tanh()).eval()
    image = symmetric_image()
    with torch.no_grad():
        torch.testing.assert_close(FlipTTAInferer()(image, network), network(image))


def test_tta_is_the_mean_of_the_flipped_back_predictions():
    network, image = asymmetric_network(), torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        expected = (
            network(image)
            + network(image.flip(2)).flip(2)
            + network(image.flip(3)).flip(3)
            + network(image.flip(2, 3)).flip(2, 3)
        ) / 4
        torch.testing.assert_close(FlipTTAInferer()(image, network), expected)
        assert not torch.allclose(expected, network(image), atol=1e-3)  # the network is not flip-equivariant


def test_tta_wraps_a_sliding_window_inferer_and_can_be_switched_off():
    network, image = asymmetric_network(), torch.rand(1, 3, 40, 40)
    window = SlidingWindowInferer(roi_size=(16, 16), overlap=0.25)
    with torch.no_grad():
        torch.testing.assert_close(FlipTTAInferer(window, enabled=False)(image, network), window(image, network))
        assert FlipTTAInferer(window)(image, network).shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match="at least one flip"):
        FlipTTAInferer(flips=[])


def test_bf16_inferer_returns_float32_close_to_the_float32_pass():
    network, image = asymmetric_network(), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = network(image)
        forced = CpuBf16Inferer(enabled=True)(image, network)
        torch.testing.assert_close(CpuBf16Inferer(enabled=False)(image, network), plain, rtol=0, atol=0)
    assert forced.dtype == torch.float32 and not torch.equal(forced, plain)
    torch.testing.assert_close(forced, plain, rtol=0.05, atol=0.05)
    assert CpuBf16Inferer().enabled == cpu_has_native_bf16()
    with pytest.raises(ValueError, match="'auto'"):
        CpuBf16Inferer(enabled="yes")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(False, False, False), (True, False, True), (False, True, True)]
)
def test_native_bf16_is_read_from_the_instruction_sets_not_from_onednn(monkeypatch, avx512_bf16, amx, expected):
    # oneDNN says "supported" on any AVX-512 core, where bfloat16 is emulated and slower than float32.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_native_bf16() is expected
    assert CpuBf16Inferer().enabled is expected
