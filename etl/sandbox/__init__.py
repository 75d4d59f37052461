"""Fake Intercom and Klaviyo servers on loopback, faithful to the specs, plus a seeded workspace generator."""
