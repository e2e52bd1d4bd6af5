//! The gateway builds request paths relative to a provider's base URL; the broker decides the
//! base URL. Both sides' defaults must agree, or a default configuration sends requests to
//! the wrong path (e.g. `/v1/v1/messages`).

use std::collections::BTreeMap;

use spiderweb_broker::providers::Catalogue;
use spiderweb_gateway::providers::ProviderKind;

#[test]
fn every_built_in_provider_has_the_base_url_the_gateways_paths_expect() {
    let brokers = Catalogue::build(&BTreeMap::new()).expect("built-in providers");
    let kinds = [
        ProviderKind::OpenAi,
        ProviderKind::Codex,
        ProviderKind::Anthropic,
        ProviderKind::KimiCoding,
        ProviderKind::Gemini,
    ];
    for kind in kinds {
        let provider = brokers
            .get(kind.config_name())
            .unwrap_or_else(|| panic!("the broker has no built-in provider {}", kind.config_name()));
        let broker_base = provider.base_url.as_ref().map(|u| u.as_str().trim_end_matches('/').to_owned());
        assert_eq!(
            broker_base.as_deref(),
            kind.default_base_url(),
            "{}: the broker's base URL and the gateway's path convention disagree",
            kind.config_name()
        );
    }
}
