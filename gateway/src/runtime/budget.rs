//! Spending limits: tokens and USD per conversation and per user per UTC day.
//!
//! Why it exists: a shared gateway must not let one session or one user run up an
//! unbounded bill. Usage is recorded in the store after each model call (tokens from the
//! provider's usage block, USD from the pinned catalog); before each model call the totals
//! are compared with `runtime.budget`. A turn that hits a limit stops with
//! `budget_exceeded` and says which limit and how much was used.
//!
//! What it must never do: let a call start once a limit is reached. (One call can overshoot
//! a limit by at most its own usage: the cost is only known after the reply.)

use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::BudgetConfig;
use crate::store::{ConversationKey, Store, StoreError, UsageTotals};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The start of the current UTC day, in ms since the epoch.
pub fn start_of_day_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    now - now.rem_euclid(DAY_MS)
}

/// Whether any limit is set (without one, there is nothing to read before a model call).
pub fn is_limited(b: &BudgetConfig) -> bool {
    b.session_max_tokens.is_some()
        || b.session_max_usd.is_some()
        || b.user_daily_max_tokens.is_some()
        || b.user_daily_max_usd.is_some()
}

/// `Err(reason)` when a limit is reached.
pub fn check(
    b: &BudgetConfig,
    store: &dyn Store,
    conversation: &ConversationKey,
    user: &str,
) -> Result<Result<(), String>, StoreError> {
    if b.session_max_tokens.is_some() || b.session_max_usd.is_some() {
        let used = store.usage_of_conversation(conversation)?;
        if let Some(reason) = exceeded("session", used, b.session_max_tokens, b.session_max_usd) {
            return Ok(Err(reason));
        }
    }
    if b.user_daily_max_tokens.is_some() || b.user_daily_max_usd.is_some() {
        let used = store.usage_of_user_since(user, start_of_day_ms())?;
        let scope = format!("daily ({user})");
        if let Some(reason) = exceeded(&scope, used, b.user_daily_max_tokens, b.user_daily_max_usd) {
            return Ok(Err(reason));
        }
    }
    Ok(Ok(()))
}

fn exceeded(scope: &str, used: UsageTotals, max_tokens: Option<u64>, max_usd: Option<f64>) -> Option<String> {
    if let Some(max) = max_tokens
        && used.tokens >= max
    {
        return Some(format!("the {scope} token budget of {max} is used up ({} tokens spent)", used.tokens));
    }
    if let Some(max) = max_usd
        && used.cost_usd >= max
    {
        return Some(format!("the {scope} budget of ${max:.4} is used up (${:.4} spent)", used.cost_usd));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_their_scope_and_the_amount_spent() {
        let used = UsageTotals { tokens: 1200, cost_usd: 0.5 };
        assert_eq!(exceeded("session", used, Some(2000), Some(1.0)), None);
        let tokens = exceeded("session", used, Some(1000), None).unwrap();
        assert!(tokens.contains("session token budget of 1000") && tokens.contains("1200"), "{tokens}");
        let usd = exceeded("daily (user)", used, None, Some(0.25)).unwrap();
        assert!(usd.contains("daily (user) budget of $0.2500") && usd.contains("$0.5000"), "{usd}");
        assert_eq!(start_of_day_ms() % DAY_MS, 0);
    }
}
