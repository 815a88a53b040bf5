"""Tests against real Apache Kafka brokers (compose/kafka.py), and the compose stack run as written."""
