"""One module per figure of `metasweep plot`; each has `data(ctx, metric)` (the numbers, from SQL
over the dataset), `draw(data, ctx)` (a matplotlib Figure) and `figure(ctx, metric)`."""
