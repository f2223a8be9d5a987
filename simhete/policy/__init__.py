"""simhete.policy"""
