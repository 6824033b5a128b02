"""The trainer job: a ResNet trained on pseudo labels with gradient alignment (Eq. 8).

``cdul train`` (:mod:`cdul.trainer.command`); the loop is :mod:`cdul.trainer.loop`.
"""
