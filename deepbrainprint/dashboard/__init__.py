"""The dashboard web app (``deepbrainprint dashboard``): flags, evidence, acknowledgement; login required."""
