//! Annals read models and projection runtime (arrives with the projections issue).
