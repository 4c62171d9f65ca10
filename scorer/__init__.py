"""scorer: Kafka-native model scoring with scikit-learn, and rolling evaluation once labels arrive."""

from __future__ import annotations

__version__ = "0.1.0"
