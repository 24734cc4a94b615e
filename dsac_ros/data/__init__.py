"""Data: 7-Scenes layout reader, synthetic scenes, bag extraction, image codec, augmentation.

Submodules are imported on use (``from dsac_ros.data.bag_extraction import extract_bag``) so that
importing one does not pull in the others' dependencies (rosbags, cv2).
"""
