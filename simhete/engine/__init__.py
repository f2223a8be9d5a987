"""simhete.engine"""
