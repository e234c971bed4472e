//! `agent token`: prints a JWT for the secret `agent serve` is given, so a
//! person with curl can call the API.

use std::time::Duration;

use crate::api::auth::Authenticator;
use crate::cli::TokenArgs;
use crate::config;
use crate::error::Error;

/// Mints a token for the secret that `serve` would use.
pub fn token(args: TokenArgs) -> Result<String, Error> {
    let secret = config::load_secret(
        args.auth_token_secret,
        args.auth_token_secret_file.as_deref(),
    )?;
    Ok(Authenticator::new(&secret).mint(Duration::from_secs(args.ttl)))
}
