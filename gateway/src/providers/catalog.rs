//! The pinned model catalog: context window, output limit and price of each known model.
//!
//! Why it exists: the turn loop budgets context (compacting before the window overflows)
//! and money (per session and per user per day) from these figures, so they live in one
//! reviewed table rather than being fetched at run time. Prices are list prices in USD per
//! million tokens as published by each provider, pinned on [`PINNED_ON`]; models the
//! providers had not priced when pinned are marked in `PRICE_ASSUMED` and take their
//! family's price. It must never under-estimate for an unknown model: unknown models get
//! a small window and their family's highest price, and are flagged so the caller can
//! warn (self-hosted OpenAI-compatible servers and plugins cost nothing per token).

use super::ProviderKind;
use super::event::Usage;

/// The date the figures below were checked.
pub const PINNED_ON: &str = "2026-11-21";

/// Limits and prices of one model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInfo {
    pub id: &'static str,
    /// Prompt plus output tokens the model accepts.
    pub context_window: u32,
    /// Most output tokens one reply may have.
    pub max_output_tokens: u32,
    pub pricing: Pricing,
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    pub input: f64,
    /// Prompt tokens read from the provider's cache.
    pub cached_input: f64,
    /// Prompt tokens written to the cache (Anthropic charges extra; others bill input).
    pub cache_write: f64,
    pub output: f64,
}

impl Pricing {
    const FREE: Self = Self {
        input: 0.0,
        cached_input: 0.0,
        cache_write: 0.0,
        output: 0.0,
    };

    /// Price with the provider's usual cache discount (10% reads, writes at input price).
    const fn per_mtok(input: f64, output: f64) -> Self {
        Self {
            input,
            cached_input: input / 10.0,
            cache_write: input,
            output,
        }
    }

    /// Anthropic's cache rules: reads at 10%, writes at 125% of input.
    const fn anthropic(input: f64, output: f64) -> Self {
        Self {
            input,
            cached_input: input / 10.0,
            cache_write: input * 1.25,
            output,
        }
    }

    const fn with_cached(mut self, cached_input: f64) -> Self {
        self.cached_input = cached_input;
        self
    }

    /// The cost of one reply's usage.
    pub fn cost_usd(&self, usage: &Usage) -> f64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
        let plain = usage.input_tokens - cached - written;
        (plain as f64 * self.input
            + cached as f64 * self.cached_input
            + written as f64 * self.cache_write
            + usage.output_tokens as f64 * self.output)
            / 1_000_000.0
    }
}

/// The answer to a lookup: the figures to use, and whether they are the model's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lookup {
    pub info: ModelInfo,
    /// False for an unknown model: `info` holds conservative defaults, warn the user.
    pub known: bool,
}

/// Which table a provider kind's models are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    OpenAi,
    Anthropic,
    Kimi,
    Gemini,
    SelfHosted,
}

fn family(kind: ProviderKind) -> Family {
    match kind {
        ProviderKind::OpenAi
        | ProviderKind::OpenAiResponses
        | ProviderKind::Codex
        | ProviderKind::AzureOpenAi => Family::OpenAi,
        ProviderKind::Anthropic => Family::Anthropic,
        ProviderKind::KimiCoding => Family::Kimi,
        ProviderKind::Gemini => Family::Gemini,
        ProviderKind::OpenAiCompatible | ProviderKind::Plugin => Family::SelfHosted,
    }
}

const fn model(
    id: &'static str,
    context_window: u32,
    max_output_tokens: u32,
    pricing: Pricing,
) -> ModelInfo {
    ModelInfo {
        id,
        context_window,
        max_output_tokens,
        pricing,
    }
}

const OPENAI: &[ModelInfo] = &[
    model(
        "gpt-4o",
        128_000,
        16_384,
        Pricing::per_mtok(2.50, 10.00).with_cached(1.25),
    ),
    model(
        "gpt-4o-mini",
        128_000,
        16_384,
        Pricing::per_mtok(0.15, 0.60).with_cached(0.075),
    ),
    model(
        "gpt-4.1",
        1_047_576,
        32_768,
        Pricing::per_mtok(2.00, 8.00).with_cached(0.50),
    ),
    model(
        "gpt-4.1-mini",
        1_047_576,
        32_768,
        Pricing::per_mtok(0.40, 1.60).with_cached(0.10),
    ),
    model(
        "gpt-4.1-nano",
        1_047_576,
        32_768,
        Pricing::per_mtok(0.10, 0.40).with_cached(0.025),
    ),
    model(
        "gpt-4",
        8_192,
        8_192,
        Pricing::per_mtok(30.00, 60.00).with_cached(30.00),
    ),
    model(
        "o3",
        200_000,
        100_000,
        Pricing::per_mtok(2.00, 8.00).with_cached(0.50),
    ),
    model(
        "o4-mini",
        200_000,
        100_000,
        Pricing::per_mtok(1.10, 4.40).with_cached(0.275),
    ),
    model(
        "codex-mini-latest",
        200_000,
        100_000,
        Pricing::per_mtok(1.50, 6.00).with_cached(0.375),
    ),
    model("gpt-5", 400_000, 128_000, Pricing::per_mtok(1.25, 10.00)),
    model(
        "gpt-5-mini",
        400_000,
        128_000,
        Pricing::per_mtok(0.25, 2.00),
    ),
    model(
        "gpt-5-nano",
        400_000,
        128_000,
        Pricing::per_mtok(0.05, 0.40),
    ),
    model(
        "gpt-5-codex",
        400_000,
        128_000,
        Pricing::per_mtok(1.25, 10.00),
    ),
    model("gpt-5.1", 400_000, 128_000, Pricing::per_mtok(1.25, 10.00)),
    model(
        "gpt-5.1-codex",
        400_000,
        128_000,
        Pricing::per_mtok(1.25, 10.00),
    ),
    model(
        "gpt-5.1-codex-mini",
        400_000,
        128_000,
        Pricing::per_mtok(0.25, 2.00),
    ),
    model(
        "gpt-5.1-codex-max",
        400_000,
        128_000,
        Pricing::per_mtok(1.25, 10.00),
    ),
    model("gpt-5.2", 400_000, 128_000, Pricing::per_mtok(1.75, 14.00)),
    model(
        "gpt-5.2-codex",
        400_000,
        128_000,
        Pricing::per_mtok(1.75, 14.00),
    ),
    model(
        "gpt-5.3-codex",
        400_000,
        128_000,
        Pricing::per_mtok(1.75, 14.00),
    ),
    model(
        "gpt-5.3-codex-spark",
        128_000,
        32_000,
        Pricing::per_mtok(1.75, 14.00),
    ),
];

const ANTHROPIC: &[ModelInfo] = &[
    model(
        "claude-3-5-sonnet-20241022",
        200_000,
        8_192,
        Pricing::anthropic(3.00, 15.00),
    ),
    model(
        "claude-3-5-sonnet-latest",
        200_000,
        8_192,
        Pricing::anthropic(3.00, 15.00),
    ),
    model(
        "claude-3-5-haiku-20241022",
        200_000,
        8_192,
        Pricing::anthropic(0.80, 4.00),
    ),
    model(
        "claude-3-7-sonnet-20250219",
        200_000,
        64_000,
        Pricing::anthropic(3.00, 15.00),
    ),
    model(
        "claude-sonnet-4-20250514",
        200_000,
        64_000,
        Pricing::anthropic(3.00, 15.00),
    ),
    model(
        "claude-opus-4-20250514",
        200_000,
        32_000,
        Pricing::anthropic(15.00, 75.00),
    ),
    model(
        "claude-opus-4-1-20250805",
        200_000,
        32_000,
        Pricing::anthropic(15.00, 75.00),
    ),
    model(
        "claude-sonnet-4-5-20250929",
        200_000,
        64_000,
        Pricing::anthropic(3.00, 15.00),
    ),
    model(
        "claude-sonnet-4-5",
        200_000,
        64_000,
        Pricing::anthropic(3.00, 15.00),
    ),
    model(
        "claude-haiku-4-5-20251001",
        200_000,
        64_000,
        Pricing::anthropic(1.00, 5.00),
    ),
    model(
        "claude-haiku-4-5",
        200_000,
        64_000,
        Pricing::anthropic(1.00, 5.00),
    ),
    model(
        "claude-opus-4-5-20251101",
        200_000,
        64_000,
        Pricing::anthropic(5.00, 25.00),
    ),
    model(
        "claude-opus-4-5",
        200_000,
        64_000,
        Pricing::anthropic(5.00, 25.00),
    ),
];

const KIMI: &[ModelInfo] = &[
    model(
        "kimi-for-coding",
        262_144,
        32_768,
        Pricing::per_mtok(0.60, 2.50).with_cached(0.15),
    ),
    model(
        "kimi-k2",
        262_144,
        32_768,
        Pricing::per_mtok(0.60, 2.50).with_cached(0.15),
    ),
    model(
        "kimi-k2-0905-preview",
        262_144,
        32_768,
        Pricing::per_mtok(0.60, 2.50).with_cached(0.15),
    ),
    model(
        "kimi-k2-turbo-preview",
        262_144,
        32_768,
        Pricing::per_mtok(1.15, 8.00).with_cached(0.15),
    ),
    model(
        "kimi-k2-thinking",
        262_144,
        32_768,
        Pricing::per_mtok(0.60, 2.50).with_cached(0.15),
    ),
    model(
        "kimi-k2.5",
        262_144,
        32_768,
        Pricing::per_mtok(0.60, 3.00).with_cached(0.10),
    ),
];

const GEMINI: &[ModelInfo] = &[
    model(
        "gemini-1.5-pro",
        2_097_152,
        8_192,
        Pricing::per_mtok(1.25, 5.00).with_cached(0.3125),
    ),
    model(
        "gemini-1.5-flash",
        1_048_576,
        8_192,
        Pricing::per_mtok(0.075, 0.30).with_cached(0.01875),
    ),
    model(
        "gemini-2.0-flash",
        1_048_576,
        8_192,
        Pricing::per_mtok(0.10, 0.40).with_cached(0.025),
    ),
    model(
        "gemini-2.5-pro",
        1_048_576,
        65_536,
        Pricing::per_mtok(1.25, 10.00),
    ),
    model(
        "gemini-2.5-flash",
        1_048_576,
        65_536,
        Pricing::per_mtok(0.30, 2.50),
    ),
    model(
        "gemini-2.5-flash-lite",
        1_048_576,
        65_536,
        Pricing::per_mtok(0.10, 0.40),
    ),
    model(
        "gemini-3-pro-preview",
        1_048_576,
        65_536,
        Pricing::per_mtok(2.00, 12.00),
    ),
];

/// Models whose price was not published when pinned; they carry their family's price.
pub const PRICE_ASSUMED: &[&str] = &["gpt-5.3-codex", "gpt-5.3-codex-spark", "kimi-for-coding"];

/// Window and output limit assumed for a model the catalog does not know: small enough
/// that compaction starts early rather than the provider rejecting the prompt.
const UNKNOWN_CONTEXT_WINDOW: u32 = 32_768;
const UNKNOWN_MAX_OUTPUT: u32 = 4_096;

fn table(family: Family) -> &'static [ModelInfo] {
    match family {
        Family::OpenAi => OPENAI,
        Family::Anthropic => ANTHROPIC,
        Family::Kimi => KIMI,
        Family::Gemini => GEMINI,
        Family::SelfHosted => &[],
    }
}

/// Every model of the catalog, for listing.
pub fn models(kind: ProviderKind) -> &'static [ModelInfo] {
    table(family(kind))
}

/// Looks `model` up for `kind`. Dated snapshots (`gpt-4o-2024-08-06`) and Gemini's
/// `models/` prefix resolve to their base entry; the longest matching id wins.
pub fn lookup(kind: ProviderKind, model: &str) -> Lookup {
    let family = family(kind);
    let entries = table(family);
    let wanted = model.strip_prefix("models/").unwrap_or(model);
    let exact = entries.iter().find(|entry| entry.id == wanted);
    let snapshot = || {
        entries
            .iter()
            .filter(|entry| {
                wanted
                    .strip_prefix(entry.id)
                    .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('@'))
            })
            .max_by_key(|entry| entry.id.len())
    };
    if let Some(info) = exact.or_else(snapshot) {
        return Lookup {
            info: *info,
            known: true,
        };
    }
    let pricing = if family == Family::SelfHosted {
        Pricing::FREE
    } else {
        most_expensive(entries)
    };
    Lookup {
        info: ModelInfo {
            id: "unknown",
            context_window: UNKNOWN_CONTEXT_WINDOW,
            max_output_tokens: UNKNOWN_MAX_OUTPUT,
            pricing,
        },
        known: false,
    }
}

fn most_expensive(entries: &[ModelInfo]) -> Pricing {
    entries
        .iter()
        .map(|entry| entry.pricing)
        .max_by(|a, b| a.output.total_cmp(&b.output))
        .unwrap_or(Pricing::FREE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_models_are_known() {
        for (kind, model) in [
            (ProviderKind::OpenAi, "gpt-4o-mini"),
            (ProviderKind::OpenAi, "gpt-4o"),
            (ProviderKind::OpenAi, "gpt-4.1"),
            (ProviderKind::OpenAi, "gpt-4"),
            (ProviderKind::OpenAi, "codex-mini-latest"),
            (ProviderKind::Codex, "gpt-5.1"),
            (ProviderKind::Codex, "gpt-5.2"),
            (ProviderKind::Codex, "gpt-5.3-codex"),
            (ProviderKind::Codex, "gpt-5.3-codex-spark"),
            (ProviderKind::KimiCoding, "kimi-k2"),
            (ProviderKind::KimiCoding, "kimi-k2.5"),
            (ProviderKind::Anthropic, "claude-3-5-sonnet-20241022"),
            (ProviderKind::Anthropic, "claude-3-5-sonnet-latest"),
            (ProviderKind::Gemini, "gemini-1.5-pro"),
            (ProviderKind::AzureOpenAi, "gpt-4o"),
        ] {
            assert!(lookup(kind, model).known, "{kind:?} {model}");
        }
        for assumed in PRICE_ASSUMED {
            assert!(
                [OPENAI, KIMI]
                    .iter()
                    .any(|t| t.iter().any(|m| m.id == *assumed)),
                "{assumed} is not in the catalog"
            );
        }
    }

    #[test]
    fn every_entry_is_consistent() {
        for (family, entries) in [
            ("openai", OPENAI),
            ("anthropic", ANTHROPIC),
            ("kimi", KIMI),
            ("gemini", GEMINI),
        ] {
            for entry in entries {
                assert!(
                    entry.max_output_tokens <= entry.context_window,
                    "{family} {}",
                    entry.id
                );
                let p = entry.pricing;
                assert!(
                    p.input > 0.0 && p.output >= p.input,
                    "{family} {}",
                    entry.id
                );
                assert!(p.cached_input <= p.input, "{family} {}", entry.id);
                assert_eq!(
                    entries.iter().filter(|other| other.id == entry.id).count(),
                    1,
                    "{family} {} is listed twice",
                    entry.id
                );
            }
        }
    }

    #[test]
    fn snapshots_resolve_to_the_longest_base_id() {
        let found = lookup(ProviderKind::OpenAi, "gpt-4o-mini-2024-07-18");
        assert!(found.known);
        assert_eq!(found.info.id, "gpt-4o-mini");
        assert_eq!(
            lookup(ProviderKind::OpenAi, "gpt-4o-2024-08-06").info.id,
            "gpt-4o"
        );
        assert_eq!(
            lookup(ProviderKind::Gemini, "models/gemini-2.5-flash")
                .info
                .id,
            "gemini-2.5-flash"
        );
        assert!(!lookup(ProviderKind::OpenAi, "gpt-4ox").known);
    }

    #[test]
    fn unknown_models_get_conservative_defaults_and_a_flag() {
        let unknown = lookup(ProviderKind::Anthropic, "claude-next");
        assert!(!unknown.known);
        assert_eq!(unknown.info.context_window, UNKNOWN_CONTEXT_WINDOW);
        let priciest = ANTHROPIC
            .iter()
            .map(|m| m.pricing.output)
            .fold(0.0, f64::max);
        assert_eq!(unknown.info.pricing.output, priciest);
        let local = lookup(ProviderKind::OpenAiCompatible, "llama3.1:8b");
        assert!(!local.known);
        assert_eq!(local.info.pricing, Pricing::FREE);
    }

    #[test]
    fn cost_counts_cache_reads_and_writes_at_their_price() {
        let sonnet = lookup(ProviderKind::Anthropic, "claude-sonnet-4-5")
            .info
            .pricing;
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cached_input_tokens: 500_000,
            cache_write_tokens: 100_000,
        };
        // 400k plain × $3 + 500k read × $0.30 + 100k written × $3.75 + 100k out × $15
        let expected = 1.2 + 0.15 + 0.375 + 1.5;
        assert!((sonnet.cost_usd(&usage) - expected).abs() < 1e-9);
        let mini = lookup(ProviderKind::OpenAi, "gpt-4o-mini").info.pricing;
        let plain = Usage {
            input_tokens: 2_000,
            output_tokens: 1_000,
            ..Usage::default()
        };
        assert!((mini.cost_usd(&plain) - (0.0003 + 0.0006)).abs() < 1e-12);
    }
}
