"""Region-keeping edits: which regions an instruction names (plain body-part English, sides, targets that do not
move, whole-body changes), and an Editor whose pose changes only there while `pose_codes` stay the model's."""

from __future__ import annotations

import pytest
import torch

from unipose_sdk.body.examples import load_example_pose
from unipose_sdk.body.pose import Pose
from unipose_sdk.body.regions import REGION_JOINTS, regions_named, take_regions
from unipose_sdk.body.skeleton import JOINT_INDEX
from unipose_sdk.errors import InvalidOptionError
from unipose_sdk.options import EditorOptions
from unipose_sdk.tasks import Editor


@pytest.mark.parametrize("instruction, regions", [
    ("raise your left arm above your head", {"left_arm"}),  # the head is where the hand goes, not what moves
    ("Put your hands on your hips.", {"left_arm", "right_arm"}),
    ("bend your right knee to a right angle", {"right_leg"}),  # "right angle" is no side
    ("Let your right thigh hang straight down and shift your right foot to the front.", {"right_leg"}),
    ("lean forward", {"spine"}),
    ("turn your head to the left", {"head"}),
    ("look at your left hand", {"head"}),
    ("straighten your legs and lower your arms", {"left_arm", "right_arm", "left_leg", "right_leg"}),
    ("touch your left knee with your right hand", {"right_arm"}),
    ("Lower your left hand to your side and bend your spine backward.", {"left_arm", "spine"}),
    ("raise your arm", {"left_arm", "right_arm"}),  # no side given: either may be meant
    ("RAISE YOUR RIGHT ELBOW", {"right_arm"}),
    ("cross your arms behind your back", {"left_arm", "right_arm"}),
])
def test_instructions_name_their_regions(instruction: str, regions: set[str]) -> None:
    assert regions_named(instruction) == frozenset(regions)


@pytest.mark.parametrize("instruction", ["squat down", "sit on the floor", "lie down on your back", "jump",
                                         "stand on your left leg", "make it look happier", "do the same again",
                                         "turn around and wave with your right hand"])
def test_whole_body_or_unnamed_changes_take_the_whole_answer(instruction: str) -> None:
    assert regions_named(instruction) is None


def test_take_regions_copies_only_the_named_joints() -> None:
    source, edited = load_example_pose("standing_relaxed"), load_example_pose("squatting")
    merged = take_regions(source, edited, {"left_leg", "head"})
    taken = {JOINT_INDEX[j] for r in ("left_leg", "head") for j in REGION_JOINTS[r]}
    for joint in range(22):
        expected = edited if joint in taken else source
        assert torch.equal(merged.rotmat[0, joint], expected.rotmat[0, joint]), joint
    assert torch.equal(take_regions(source, edited, set()).rotmat, source.rotmat)
    assert set(REGION_JOINTS) == {"left_arm", "right_arm", "left_leg", "right_leg", "spine", "head"}
    # Every joint but the pelvis (the global orientation, kept from the source unless the whole answer is taken).
    assert sorted(JOINT_INDEX[j] for js in REGION_JOINTS.values() for j in js) == list(range(1, 22))


def test_the_editor_changes_only_the_named_regions_and_keeps_the_model_s_codes(editor: Editor) -> None:
    whole = Editor.from_session(editor.session, EditorOptions(keep_unnamed_regions=False))
    source = load_example_pose("standing_relaxed")
    instruction = "raise your left arm above your head"
    kept, answer = editor.edit(source, instruction), whole.edit(source, instruction)
    assert kept.edited_regions == ["left_arm"] and answer.edited_regions == []
    assert kept.pose_codes == answer.pose_codes  # the model answered the same; only the returned pose differs
    arm = [JOINT_INDEX[j] for j in REGION_JOINTS["left_arm"]]
    rest = [j for j in range(22) if j not in arm]
    assert torch.equal(kept.pose.rotmat[0, arm], answer.pose.rotmat[0, arm])
    assert torch.equal(kept.pose.rotmat[0, rest], source.rotmat[0, rest])  # the global orientation included
    squat = editor.edit(source, "squat down")  # a whole-body change: the model's whole answer
    assert squat.edited_regions == [] and torch.equal(squat.pose.rotmat, whole.edit(source, "squat down").pose.rotmat)
    assert kept.to_dict()["edited_regions"] == ["left_arm"]
    with pytest.raises(InvalidOptionError, match="keep_unnamed_regions='no'"):
        EditorOptions(keep_unnamed_regions="no")  # type: ignore[arg-type]
    assert isinstance(kept.pose, Pose)
