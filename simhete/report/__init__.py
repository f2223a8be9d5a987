"""simhete.report"""
