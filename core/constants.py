"""Numbers every package must agree on."""

TRADING_DAYS_PER_YEAR = 252
"""Trading days per year: annualises Sharpe ratios, volatilities and returns everywhere."""
