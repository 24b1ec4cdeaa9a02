"""Import every .bvh and .glb of a directory into Blender and print the joint positions Blender computes, as JSON.

Run inside Blender (headless):

    blender -b --python benchmarks/blender_check.py -- DIR [--render OUT.png RENDER_1.glb RENDER_2.glb ...]

DIR may hold `manifest.json` ({file name: number of frames}); files not in it are read as one frame. Each file is
imported into an empty scene with Blender's own importers (io_anim_bvh, io_scene_gltf2) at 30 frames per second,
and for every frame the world position of every joint is read back: a BVH joint is the head of its pose bone, a
glTF joint the world translation of its node's object. Blender is +z up; the positions are turned back into the
files' +y up frame ((x, y, z) -> (x, z, -y)) so they compare with the SDK directly. The result is printed between
the lines BEGIN_JOINTS_JSON and END_JOINTS_JSON. With --render, the listed GLBs are imported side by side and
rendered with the workbench engine to OUT.png.
"""

from __future__ import annotations

import builtins
import json
import math
import sys
from pathlib import Path

import bpy  # provided by Blender

FPS = 30


def _empty_scene() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = FPS
    bpy.context.scene.render.fps_base = 1.0


def _y_up(vector) -> list[float]:
    return [float(vector[0]), float(vector[2]), -float(vector[1])]


def _patch_bvh_importer() -> None:
    """Blender 3.4's BVH importer opens files with mode 'rU', which Python 3.11 removed (Debian's blender runs on
    3.11): give its module an `open` that drops the 'U' (universal newlines are the default anyway)."""
    import io_anim_bvh.import_bvh as importer

    if getattr(importer, "_mode_patched", False):
        return
    importer.open = lambda file, mode="r", *args, **kwargs: builtins.open(file, mode.replace("U", ""), *args,
                                                                          **kwargs)
    importer._mode_patched = True


def _bvh_frames(path: Path, frames: int) -> dict[str, list[list[float]]]:
    _empty_scene()
    _patch_bvh_importer()
    bpy.ops.import_anim.bvh(filepath=str(path), global_scale=1.0, frame_start=1, use_fps_scale=False,
                            update_scene_fps=False, update_scene_duration=True, rotate_mode="NATIVE",
                            axis_forward="-Z", axis_up="Y")
    armature = next(obj for obj in bpy.context.scene.objects if obj.type == "ARMATURE")
    found: dict[str, list[list[float]]] = {bone.name: [] for bone in armature.pose.bones}
    for frame in range(frames):
        bpy.context.scene.frame_set(1 + frame)
        for bone in armature.pose.bones:
            found[bone.name].append(_y_up(armature.matrix_world @ bone.head))
    return found


def _patch_numpy_for_gltf_importer() -> None:
    """Blender 3.4's glTF importer uses `np.bool`, which numpy 1.24 removed (Debian's python3-numpy): restore it
    as the alias it was."""
    import numpy

    if "bool" not in numpy.__dict__:
        numpy.bool = numpy.bool_


def _glb_frames(path: Path, frames: int) -> dict[str, list[list[float]]]:
    _empty_scene()
    _patch_numpy_for_gltf_importer()
    bpy.ops.import_scene.gltf(filepath=str(path))
    objects = {obj.name: obj for obj in bpy.context.scene.objects}
    starts = [action.frame_range[0] for action in bpy.data.actions]
    first = min(starts) if starts else bpy.context.scene.frame_current
    found: dict[str, list[list[float]]] = {name: [] for name, obj in objects.items() if obj.type == "EMPTY"}
    for frame in range(frames):
        # keyframes are 1/30 s apart and the scene runs at 30 frames per second: one keyframe per frame
        bpy.context.scene.frame_set(int(round(first)) + frame)
        bpy.context.view_layer.update()
        for name in found:
            found[name].append(_y_up(objects[name].matrix_world.translation))
    return found


def _render(out: Path, files: list[Path]) -> None:
    _empty_scene()
    _patch_numpy_for_gltf_importer()
    spacing_m = 0.9
    for n, path in enumerate(files):
        before = set(bpy.context.scene.objects)
        bpy.ops.import_scene.gltf(filepath=str(path))
        roots = [obj for obj in set(bpy.context.scene.objects) - before if obj.parent is None]
        for root in roots:
            root.location.x += (n - (len(files) - 1) / 2) * spacing_m
    scene = bpy.context.scene
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    camera.data.type = "ORTHO"
    camera.data.ortho_scale = max(2.4, spacing_m * len(files) + 0.4)
    camera.location = (0.0, -6.0, -0.1)  # in front of the bodies (they face -y in Blender), at hip height
    camera.rotation_euler = (math.pi / 2, 0.0, 0.0)
    scene.camera = camera
    scene.world = bpy.data.worlds.new("background")
    scene.world.color = (0.92, 0.92, 0.92)
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "MATERIAL"
    scene.render.resolution_x = 960
    scene.render.resolution_y = 400
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.compression = 100
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)


def main(argv: list[str]) -> None:
    directory = Path(argv[0])
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    result = {"blender_version": bpy.app.version_string, "files": {}}
    for path in sorted(directory.iterdir()):
        frames = int(manifest.get(path.name, 1))
        if path.suffix == ".bvh":
            result["files"][path.name] = _bvh_frames(path, frames)
        elif path.suffix == ".glb":
            result["files"][path.name] = _glb_frames(path, frames)
    print("BEGIN_JOINTS_JSON", flush=True)
    print(json.dumps(result), flush=True)
    print("END_JOINTS_JSON", flush=True)
    if "--render" in argv:
        at = argv.index("--render")
        _render(Path(argv[at + 1]), [Path(p) for p in argv[at + 2:]])


if __name__ == "__main__":
    main(sys.argv[sys.argv.index("--") + 1:])
