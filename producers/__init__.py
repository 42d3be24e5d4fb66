"""Producers: market data and broker feeds into Kafka.

- :class:`RecordProducer` — idempotent, delivery-checked producing of our records
- :mod:`producers.synthetic` — GBM trade generator (pure); :mod:`producers.synthetic_feed`
  runs it as the `feed` stage
"""

from producers.kafka_producer import RecordProducer

__all__ = ["RecordProducer"]
