"""Campaigns service: campaigns, coupons, A/B assignment, attribution, spend, ROI (SPEC.md "Campaigns")."""
