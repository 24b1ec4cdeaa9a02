"""Pose files: read by content, written atomically (the public name of the readers and writers, which live
beside the `Pose` type in `unipose_sdk.body.pose`: a Pose loads and saves itself, and the readers build Poses).

Readable layouts (the format is recognised from the file's first bytes and, for .npz, from its keys; the
extension is only a hint):

| layout | content |
|---|---|
| smplx .npz | `global_orient` [B, 3], `body_pose` [B, 63] or [B, 21, 3] axis-angle (or [B, 1|-, 3, 3] / [B, 21, 3, 3] matrices); optional `transl` [B, 3], `betas` [B, K] or [K] |
| AMASS .npz | `root_orient` [N, 3] and `pose_body` [N, 63]; or `poses` [N, 156] (SMPL-H) / [N, 165] (SMPL-X) / [N, 72] / [N, 66] whose first 66 values are ours; optional `trans` [N, 3], `betas` |
| .npy | the official UniPose demo's (22, 3, 3) float32 rotation matrices, or (B, 22, 3, 3); any array `Pose.from_any` recognises by shape also works |
| JSON | `{"format": "unipose-pose", "version": 1, "rotation_format": "axis_angle" | "rotmat" | "rotation_6d", "joint_names": [22 names], "poses": [B x 22 x 3 | 3x3 | 6], "transl_m": [B x 3] (optional), "betas": [B x K] or [K] (optional)}` |
| BVH | the 22-joint SMPL hierarchy (joint names and parents as `unipose_sdk.body.bvh` writes them, any rotation channel order); frames become poses, the root position `transl` |

Writing picks the layout from the extension: .npz -> smplx keys (float32 axis-angle), .npy -> the demo's
matrices ((22, 3, 3) for one pose, (B, 22, 3, 3) otherwise), .json -> the JSON schema above with axis-angle,
.bvh -> a BVH clip of B frames (metres, ZXY channels; `unipose_sdk.body.bvh.write_bvh` for centimetres or other
orders), .glb -> skeleton nodes and a box mannequin, an animation for B > 1 (`unipose_sdk.body.gltf`, needs the
`gltf` extra).
Every write goes to a temporary file in the target directory that is renamed over the target only once complete,
so a failed save leaves the previous file (or nothing) behind. Pickles are never unpickled.

Reading checks before it reads: the path must name a regular file (a FIFO would block, a device stream forever),
a JSON document may nest at most `MAX_JSON_DEPTH` levels and its numbers must be JSON numbers (not strings or
booleans), every stored value must fit a float32, and a damaged .npz member is a PoseFormatError naming the file
and the member.
"""

from unipose_sdk.body.pose import (
    JSON_FORMAT_NAME,
    JSON_FORMAT_VERSION,
    MAX_JSON_DEPTH,
    WRITE_EXTENSIONS,
    PoseFile,
    detect_pose_format,
    load_pose,
    read_pose_file,
    save_pose,
)

__all__ = [
    "JSON_FORMAT_NAME", "JSON_FORMAT_VERSION", "MAX_JSON_DEPTH", "WRITE_EXTENSIONS", "PoseFile",
    "detect_pose_format", "load_pose", "read_pose_file", "save_pose",
]
