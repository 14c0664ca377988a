"""Alert rules, their evaluation on the merged views, the alert store and webhook delivery."""
