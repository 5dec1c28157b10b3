"""The HoVer map option: targets, loss, contact energy, flip TTA, predictor and checkpoint channels."""

import json

import numpy as np
import pytest
import torch
from bundle.checkpoints import network_output_channels
from bundle.data import DataFileError
from bundle.inferers import FlipTTAInferer
from bundle.losses import ClassAndHoVerLoss, segmentation_loss
from bundle.networks import segmentation_unet
from bundle.postprocess import ClassMapToInstances, contact_energy, stored_settings
from bundle.predictor import NucleiPredictor
from bundle.targets import BACKGROUND, BODY, ClassAndHoVerTargetd, InstanceToClassMap
from monai.losses import DiceCELoss
from monai.transforms import ComputeHoVerMaps


def touching_squares() -> np.ndarray:
    """(24, 40) ids: 1 (rows 4-19, cols 4-19) and 2 (rows 4-19, cols 20-35) share an edge."""
    ids = np.zeros((24, 40), np.int32)
    ids[4:20, 4:20] = 1
    ids[4:20, 20:36] = 2
    return ids


def hover_of(ids: np.ndarray) -> np.ndarray:
    return np.asarray(ComputeHoVerMaps()(ids[None]), dtype=np.float32)


def test_the_target_stacks_the_class_map_and_the_centroid_offsets():
    ids = touching_squares()
    classes = np.asarray(InstanceToClassMap()(ids[None]))
    target = ClassAndHoVerTargetd()({"label": classes, "instances": ids[None]})
    assert "instances" not in target and target["label"].shape == (3, 24, 40)
    assert target["label"].dtype == torch.float32
    np.testing.assert_array_equal(target["label"][0].numpy(), classes[0])
    horizontal, vertical = target["label"][1].numpy(), target["label"][2].numpy()
    assert np.all(horizontal[ids == 0] == 0) and np.all(vertical[ids == 0] == 0)
    # within a nucleus the horizontal map runs -1 -> +1 left to right, the vertical top to bottom
    assert horizontal[10, 4] == -1 and horizontal[10, 19] == 1 and horizontal[10, 20] == -1
    assert vertical[4, 10] == -1 and vertical[19, 10] == 1
    assert np.all(np.diff(horizontal[10, 4:20]) > 0)


def test_the_contact_energy_is_high_between_touching_nuclei_and_low_inside():
    energy = contact_energy(hover_of(touching_squares()))
    assert energy.shape == (24, 40) and energy.min() >= 0 and energy.max() <= 1
    assert energy[12, 19:21].min() > 0.3  # the contact between the squares
    assert energy[8:16, 8:16].max() == 0  # nucleus interiors: the maps rise, they do not fall


def test_the_contact_threshold_splits_seeds_that_the_class_map_merged():
    ids = touching_squares()
    # class map without a boundary between the squares: one body blob
    merged = np.stack([ids == 0, ids > 0, np.zeros_like(ids, bool)]).astype(np.float32)
    with_hover = np.concatenate([merged, hover_of(ids)])
    assert ClassMapToInstances(min_marker_area=1)(with_hover)[0].max() == 1  # threshold 1: every seed kept
    split = ClassMapToInstances(min_marker_area=1, contact_threshold=0.2)(with_hover)[0]
    assert split.max() == 2
    assert len(np.unique(split[ids == 1])) == 1 and len(np.unique(split[ids == 2])) == 1
    # a 3-channel map ignores the threshold
    assert ClassMapToInstances(min_marker_area=1, contact_threshold=0.2)(merged)[0].max() == 1


def test_five_channel_maps_are_checked_on_their_class_channels_only():
    ids = touching_squares()
    merged = np.stack([ids == 0, ids > 0, np.zeros_like(ids, bool)]).astype(np.float32)
    ClassMapToInstances()(np.concatenate([merged, -hover_of(ids)]))  # negative map values are fine
    with pytest.raises(ValueError, match="softmax"):
        ClassMapToInstances()(np.concatenate([merged * 3, hover_of(ids)]))
    with pytest.raises(ValueError, match=r"\(5, H, W\)"):
        ClassMapToInstances()(np.concatenate([merged, hover_of(ids)[:1]]))
    with pytest.raises(ValueError, match="contact_threshold"):
        ClassMapToInstances(contact_threshold=0.0)


def test_the_stored_contact_threshold_is_read_and_checked(tmp_path):
    path = tmp_path / "model.postprocess.json"
    path.write_text(json.dumps({"contact_threshold": 0.2, "body_threshold": 0.5}))
    assert stored_settings(path) == {"contact_threshold": 0.2, "body_threshold": 0.5}
    path.write_text(json.dumps({"contact_threshold": 1.5}))
    with pytest.raises(DataFileError, match=r"contact_threshold must be a number in \(0, 1\]"):
        stored_settings(path)


def loss_inputs():
    ids = touching_squares()
    classes = torch.as_tensor(np.asarray(InstanceToClassMap()(ids[None])), dtype=torch.float32)
    target = torch.cat([classes, torch.as_tensor(hover_of(ids))])[None]
    logits = torch.zeros(1, 3, 24, 40)
    logits[0, BACKGROUND][classes[0] == BACKGROUND] = 5.0
    logits[0, BODY][classes[0] > 0] = 5.0
    return logits, target


def test_the_hover_terms_vanish_for_the_true_maps_and_grow_with_their_error():
    logits, target = loss_inputs()
    class_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = ClassAndHoVerLoss(class_loss, hover_weight=2.0)
    exact = torch.cat([logits, target[:, 1:]], dim=1)
    assert loss(exact, target).item() == pytest.approx(class_loss(logits, target[:, :1]).item(), abs=1e-5)
    flat = torch.cat([logits, torch.zeros_like(target[:, 1:])], dim=1)
    assert loss(flat, target).item() > loss(exact, target).item() + 0.1
    with pytest.raises(ValueError, match=r"\(N, 5, H, W\)"):
        loss(logits, target)


def test_the_fine_tuning_loss_is_the_class_loss_without_a_hover_weight():
    class_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    assert segmentation_loss(class_loss, 0.0) is class_loss
    assert isinstance(segmentation_loss(class_loss, 1.0), ClassAndHoVerLoss)
    with pytest.raises(ValueError, match="hover_weight"):
        segmentation_loss(class_loss, -1.0)


class HoverOfTheImage(torch.nn.Module):
    """'Network' whose class logits are the image and whose maps are the true maps of its first channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [torch.as_tensor(hover_of((image[0] > 0.5).numpy().astype(np.int32))) for image in x]
        return torch.cat([x, torch.stack(maps)], dim=1)


def test_flip_tta_flips_the_signs_of_the_maps_back():
    ids = touching_squares()
    image = torch.as_tensor(np.stack([ids == 1] * 3), dtype=torch.float32)[None]  # one nucleus, off-centre
    plain = HoverOfTheImage()(image)
    averaged = FlipTTAInferer()(image, HoverOfTheImage())
    torch.testing.assert_close(averaged, plain, atol=1e-6, rtol=0)


def test_the_predictor_applies_softmax_to_the_classes_only():
    torch.manual_seed(0)
    network = segmentation_unet("resnet10", out_channels=5)
    predictor = NucleiPredictor(network, lambda x, net: net(x), ClassMapToInstances())
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        logits = network.eval()(images)
    out = predictor.probabilities(images)
    assert out.shape == (1, 5, 64, 64)
    torch.testing.assert_close(out[:, :3].sum(dim=1), torch.ones(1, 64, 64))
    torch.testing.assert_close(out[:, 3:], logits[:, 3:])


def test_the_output_channels_are_read_from_the_checkpoint(tmp_path):
    for channels in (3, 5):
        path = tmp_path / f"model{channels}.pt"
        torch.save({"network": segmentation_unet("resnet10", out_channels=channels).state_dict()}, path)
        assert network_output_channels(path) == channels
    plain = tmp_path / "plain.pt"
    torch.save(segmentation_unet("resnet10", out_channels=5).state_dict(), plain)
    assert network_output_channels(plain) == 5
    assert network_output_channels(tmp_path / "missing.pt") == 3
