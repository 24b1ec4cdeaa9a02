"""Bodies and poses: rotation formats, the SMPL 22-joint tree, forward kinematics, the Pose type, files, rendering."""
