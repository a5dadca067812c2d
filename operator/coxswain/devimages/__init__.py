"""Building the three Coxswain images here, without Docker (`make images`, docs/images.md).

buildah builds operator/Dockerfile, trainer_image/Dockerfile and server_image/Dockerfile on a
base image made from Debian's packages; the result is one OCI image layout the local cluster's
real nodes import. Never part of an image (.dockerignore) or of what the operator runs.
"""

from coxswain.devimages.build import BuildError, BuiltImage, BuiltImages, build_images, image_refs

__all__ = ["BuildError", "BuiltImage", "BuiltImages", "build_images", "image_refs"]
