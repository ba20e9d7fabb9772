"""The robot <-> learner link, which both processes import.

``messages`` (every message and its wire format), ``endpoints`` (the ZeroMQ sockets of
each side: :class:`~link.endpoints.RobotLink`, :class:`~link.endpoints.LearnerLink`) and
``keys`` (CURVE key files of a tcp link); ``pipe`` (length-prefixed messages between a
process and a child it started). Imports no other package of this project.
"""
