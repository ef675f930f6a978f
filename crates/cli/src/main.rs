//! `ap2`: the demo of the whole flow, cart hashes, keys, and minting and verifying intent
//! mandates offline.

mod demo;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ap2_mandate::memory::{MemoryKeys, MemoryReplayGuard};
use ap2_mandate::{
    AgentId, Cart, Clock, Consume, DpopProof, EcPublicKey, FixedClock, Htu, IntentMandate, Jkt,
    Jti, KeyRecord, KeyStatus, LocalSigner, MerchantId, Money, Presentation, ProofPresentation,
    ProofRequest, Signer, SystemClock, Verifier, VerifierConfig, make_proof,
};
use clap::{Parser, Subcommand};

/// AP2 intent mandates from the command line.
#[derive(Parser)]
#[command(name = "ap2", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the key directory, the wallet and the merchant in this process and play the whole
    /// story, then the attacks (uses Redis for the replay set when REDIS_URL is set). With
    /// the four URLs it plays against running services instead.
    Demo(demo::Endpoints),
    /// Re-verify, offline, the evidence of a passkey approval (SPEC §12, as
    /// `GET /v1/mandate-requests/{id}/evidence` returns it): that the credential's key signed
    /// the challenge derived from the request's terms and the cart. Exits 0 when it verifies,
    /// 1 with the reason when it does not.
    VerifyEvidence {
        /// The evidence's JSON file; `-` or nothing for standard input.
        file: Option<PathBuf>,
    },
    /// Print the cart_hash of a SPEC §3 cart (JSON from FILE, or standard input).
    CartHash {
        /// The cart's JSON file; `-` or nothing for standard input.
        file: Option<PathBuf>,
        /// Print the RFC 8785 canonical bytes the hash is taken over instead of the hash.
        #[arg(long)]
        canonical: bool,
    },
    /// Generate a P-256 key: write the private key as PKCS#8 PEM (mode 0600), print the
    /// public JWK with its RFC 7638 thumbprint as kid.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Generate an agent's P-256 key (SPEC §8): write the private key as PKCS#8 PEM (mode
    /// 0600), print the public JWK and its `jkt`, the thumbprint mandates are bound to.
    AgentKeygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print a DPoP proof (RFC 9449) for one request, signed with the agent's key, for
    /// `DPoP:` headers made by hand (curl).
    Dpop {
        /// The agent's private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The request's method (`POST`, `GET`).
        #[arg(long)]
        method: String,
        /// The request's URL (a query is left out of the proof).
        #[arg(long)]
        url: String,
        /// The mandate presented with the request, whose hash the proof carries (`ath`).
        #[arg(long)]
        mandate: Option<String>,
        /// The server's nonce (from its `DPoP-Nonce` header; base64url, so it may begin with
        /// `-`, and is taken as given).
        #[arg(long, allow_hyphen_values = true)]
        nonce: Option<String>,
        /// Issue as of this Unix time (default: now).
        #[arg(long)]
        now: Option<i64>,
    },
    /// Mint an intent mandate for a cart, signed with a PKCS#8 PEM key.
    Mint {
        /// The private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// The kid to put in the header (default: the key's RFC 7638 thumbprint).
        #[arg(long, allow_hyphen_values = true)]
        kid: Option<String>,
        /// The wallet (`iss`).
        #[arg(long, allow_hyphen_values = true)]
        iss: String,
        /// The user (`sub`).
        #[arg(long, allow_hyphen_values = true)]
        sub: String,
        /// The agent allowed to present it.
        #[arg(long, allow_hyphen_values = true)]
        agent: String,
        /// The cart's JSON file.
        #[arg(long)]
        cart: PathBuf,
        /// The ceiling as a decimal string (default: the cart's total).
        #[arg(long)]
        max_amount: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: i64,
        /// The token id (default: 128 random bits).
        #[arg(long, allow_hyphen_values = true)]
        jti: Option<String>,
        /// Issue as of this Unix time (default: now).
        #[arg(long)]
        now: Option<i64>,
        /// Mint this many mandates, one per line, each with its own random jti (load tests).
        #[arg(long, default_value_t = 1, conflicts_with = "jti")]
        count: u64,
        /// Bind the mandate to this agent key thumbprint (`cnf.jkt`, SPEC §8). A thumbprint
        /// is base64url and may begin with `-`, so the value is taken as given.
        #[arg(long, allow_hyphen_values = true)]
        cnf_jkt: Option<String>,
    },
    /// Verify a mandate (SPEC §4) against a public JWK, a cart and an agent. Prints the
    /// claims; on refusal prints the problem code and exits with status 1.
    Verify {
        /// The token; `-` or nothing for standard input.
        token: Option<String>,
        /// The signer's public JWK (JSON file).
        #[arg(long)]
        jwk: PathBuf,
        /// The issuer registered for the key.
        #[arg(long, allow_hyphen_values = true)]
        iss: String,
        /// The subject registered for the key.
        #[arg(long, allow_hyphen_values = true)]
        sub: String,
        /// The presenting agent.
        #[arg(long, allow_hyphen_values = true)]
        agent: String,
        /// The merchant's cart (JSON file).
        #[arg(long)]
        cart: PathBuf,
        /// This merchant's id (default: the cart's merchant_id).
        #[arg(long, allow_hyphen_values = true)]
        audience: Option<String>,
        /// Verify as of this Unix time (default: now).
        #[arg(long)]
        now: Option<i64>,
        /// Clock leeway in seconds.
        #[arg(long, default_value_t = ap2_mandate::verify::DEFAULT_LEEWAY_SECS)]
        leeway: i64,
        /// Longest accepted lifetime in seconds.
        #[arg(long, default_value_t = ap2_mandate::verify::DEFAULT_MAX_LIFETIME_SECS)]
        max_lifetime: i64,
        /// The agent's DPoP proof that came with the mandate (SPEC §8); a bound mandate needs
        /// it, with `--htm` and `--htu`.
        #[arg(long, requires_all = ["htm", "htu"])]
        dpop: Option<String>,
        /// The method of the request the proof came with.
        #[arg(long)]
        htm: Option<String>,
        /// The URL of the request the proof came with.
        #[arg(long)]
        htu: Option<String>,
        /// Refuse an unbound mandate, as a merchant does by default.
        #[arg(long)]
        require_binding: bool,
    },
}

/// Exit status for a mandate that was refused (as opposed to a usage or I/O error).
const REFUSED: u8 = 1;
const FAILED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ap2: {err:#}");
            ExitCode::from(FAILED)
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Demo(endpoints) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let all_good = runtime.block_on(demo::run(endpoints))?;
            Ok(if all_good {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(REFUSED)
            })
        }
        Command::VerifyEvidence { file } => {
            let text = read_input(file.as_deref())?;
            let evidence: ap2_mandate::evidence::Evidence =
                serde_json::from_str(&text).context("the evidence is not its JSON")?;
            match ap2_mandate::evidence::verify_evidence(&evidence) {
                Ok(verified) => {
                    println!(
                        "valid: request {} for {} at {} (at most {} {}), cart {}, signed by                          credential {} at {}; user present, {}; sign count {}; amr {}",
                        evidence.terms.request_id,
                        evidence.terms.agent_id,
                        evidence.terms.merchant_id,
                        evidence.terms.max_amount,
                        evidence.terms.currency,
                        evidence.terms.cart_hash,
                        evidence.credential.id,
                        evidence.rp_id,
                        if verified.user_verified {
                            "user verified"
                        } else {
                            "user not verified"
                        },
                        verified.sign_count,
                        evidence.amr.join(",")
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("invalid: {e}");
                    Ok(ExitCode::from(REFUSED))
                }
            }
        }
        Command::CartHash { file, canonical } => {
            let text = read_input(file.as_deref())?;
            let mut out = std::io::stdout().lock();
            for cart in carts_in(&text)? {
                if canonical {
                    out.write_all(&cart.canonical_json()?)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "{}", cart.hash())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out, force } => {
            let signer = write_new_key(&out, force)?;
            let jwk = signer.public_key().to_jwk(signer.kid());
            println!("{}", serde_json::to_string_pretty(&jwk)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::AgentKeygen { out, force } => {
            let signer = write_new_key(&out, force)?;
            let jwk: serde_json::Value =
                serde_json::from_str(&signer.public_key().thumbprint_input())?;
            let jkt = Jkt::of(signer.public_key());
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"jwk": jwk, "jkt": jkt}))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dpop {
            key,
            method,
            url,
            mandate,
            nonce,
            now,
        } => {
            let signer = load_key(&key, None)?;
            let mandate = match mandate.as_deref() {
                Some("-") => Some(read_input(None)?.trim().to_owned()),
                other => other.map(str::to_owned),
            };
            let proof = make_proof(
                &signer,
                &ProofRequest {
                    htm: &method,
                    htu: &url,
                    iat: now.unwrap_or_else(|| SystemClock.now_unix()),
                    jti: None,
                    token: mandate.as_deref(),
                    nonce: nonce.as_deref(),
                },
            )
            .context("--method is an upper-case HTTP method")?;
            println!("{proof}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Mint {
            key,
            kid,
            iss,
            sub,
            agent,
            cart,
            max_amount,
            ttl,
            jti,
            now,
            count,
            cnf_jkt,
        } => {
            let kid = kid.map(|k| ap2_mandate::Kid::parse(&k)).transpose()?;
            let signer = load_key(&key, kid)?;
            let cnf = cnf_jkt
                .map(|jkt| Jkt::parse(&jkt))
                .transpose()
                .context("--cnf-jkt")?;
            let cart = read_cart(Some(&cart))?;
            let max_amount = match max_amount {
                Some(text) => Money::parse(&text, cart.currency())
                    .with_context(|| format!("--max-amount {text:?}"))?,
                None => cart.total(),
            };
            let iat = now.unwrap_or_else(|| SystemClock.now_unix());
            let mut claims = IntentMandate {
                iss,
                sub,
                aud: cart.merchant_id().clone(),
                iat,
                nbf: None,
                exp: iat.checked_add(ttl).context("--ttl overflows")?,
                jti: match jti {
                    Some(jti) => Jti::parse(&jti)?,
                    None => Jti::random()?,
                },
                scope: ap2_mandate::Ap2Scope {
                    max_amount,
                    cart_hash: cart.hash().clone(),
                    allow_agent_id: AgentId::parse(&agent).context("--agent")?,
                },
                cnf,
                amr: None,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for i in 0..count {
                if i > 0 {
                    claims.jti = Jti::random()?;
                }
                writeln!(out, "{}", ap2_mandate::mint(&signer, &claims)?)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            token,
            jwk,
            iss,
            sub,
            agent,
            cart,
            audience,
            now,
            leeway,
            max_lifetime,
            dpop,
            htm,
            htu,
            require_binding,
        } => {
            let token = match token.as_deref() {
                None | Some("-") => read_input(None)?,
                Some(token) => token.to_owned(),
            };
            let jwk_text = std::fs::read_to_string(&jwk)
                .with_context(|| format!("reading {}", jwk.display()))?;
            let jwk_value: serde_json::Value =
                serde_json::from_str(&jwk_text).context("the JWK is not JSON")?;
            let (public, kid) = EcPublicKey::from_jwk(&jwk_value).context("the JWK")?;
            let kid = kid.unwrap_or_else(|| public.thumbprint());
            let cart = read_cart(Some(&cart))?;
            let audience = match audience {
                Some(a) => MerchantId::parse(&a).context("--audience")?,
                None => cart.merchant_id().clone(),
            };
            let keys = MemoryKeys::new();
            keys.insert(KeyRecord {
                kid,
                issuer: iss,
                subject: sub,
                status: KeyStatus::Active,
                key: public.verification_key()?,
            });
            let mut config = VerifierConfig::without_binding(audience);
            config.leeway_secs = leeway;
            config.max_lifetime_secs = max_lifetime;
            config.require_binding = require_binding;
            let clock = FixedClock(now.unwrap_or_else(|| SystemClock.now_unix()));
            let verifier = Verifier::new(config, keys, MemoryReplayGuard::new(), clock);
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            let token = token.trim();
            let proof = dpop.as_deref().map(DpopProof::parse).transpose();
            let htu = htu
                .as_deref()
                .map(Htu::parse)
                .transpose()
                .context("--htu")?;
            let presentation = match (&proof, &htm, &htu) {
                (Err(refusal), _, _) => {
                    eprintln!("refused: {}: {refusal}", refusal.code());
                    return Ok(ExitCode::from(REFUSED));
                }
                (Ok(Some(proof)), Some(htm), Some(htu)) => {
                    Presentation::dpop(token, &agent, &cart, ProofPresentation { proof, htm, htu })
                }
                _ => Presentation::bearer(token, &agent, &cart),
            };
            match runtime.block_on(verifier.verify(&presentation, Consume::No)) {
                Ok(verified) => {
                    println!("{}", serde_json::to_string_pretty(&verified.claims)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(refusal) => {
                    eprintln!("refused: {}: {refusal}", refusal.code());
                    Ok(ExitCode::from(REFUSED))
                }
            }
        }
    }
}

fn load_key(path: &Path, kid: Option<ap2_mandate::Kid>) -> Result<LocalSigner> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    LocalSigner::from_pkcs8_pem(&pem, kid).with_context(|| format!("loading {}", path.display()))
}

/// A fresh key, its private half written to `out` (mode 0600; refused if `out` exists,
/// unless `force`).
fn write_new_key(out: &Path, force: bool) -> Result<LocalSigner> {
    let signer = LocalSigner::generate()?;
    let pem = signer.to_pkcs8_pem()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(out)
        .with_context(|| format!("creating {} (use --force to overwrite)", out.display()))?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    Ok(signer)
}

fn read_input(file: Option<&Path>) -> Result<String> {
    match file {
        Some(path) if path != Path::new("-") => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        }
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            Ok(text)
        }
    }
}

fn read_cart(file: Option<&Path>) -> Result<Cart> {
    parse_cart(read_input(file)?.as_bytes())
}

fn parse_cart(json: &[u8]) -> Result<Cart> {
    match Cart::from_json(json) {
        Ok(cart) => Ok(cart),
        Err(err) => bail!("the cart is refused: {err}"),
    }
}

/// One cart, or a JSON array of carts or of test vectors (`{"cart": …}`), in order.
fn carts_in(text: &str) -> Result<Vec<Cart>> {
    #[derive(serde::Deserialize)]
    struct Vector<'a> {
        #[serde(borrow)]
        cart: &'a serde_json::value::RawValue,
    }
    if !text.trim_start().starts_with('[') {
        return Ok(vec![parse_cart(text.as_bytes())?]);
    }
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(text).context("the input is not a JSON array")?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let json = match serde_json::from_str::<Vector<'_>>(item.get()) {
                Ok(vector) => vector.cart.get(),
                Err(_) => item.get(),
            };
            parse_cart(json.as_bytes()).with_context(|| format!("cart #{}", i + 1))
        })
        .collect()
}
