//! The deployment files (Dockerfile, deploy/kubernetes/, deploy/prometheus/alerts.yaml)
//! against the real binary and server: every setting they name is one `serve --help`
//! lists and the server accepts, every path they probe answers 200, every metric and label
//! value they alert on is served, and a keys dir laid out as a Kubernetes Secret volume
//! serves and follows an update of the Secret. The overlays: the federation overlay's
//! trusted issuers file loads, and its example workload's script gets an access token for
//! a projected token from the real server; with kubectl at hand, every kustomization
//! builds. A renamed flag, path or metric fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jwt_issuer::SigningAlg;
use jwt_issuer::server::SHUTDOWN_TIMEOUT;
use tempfile::TempDir;
use yaml_rust2::{Yaml, YamlLoader};

use crate::external::ExternalKey;
use crate::helpers::{
    PATIENCE, ServeProcess, TestClient, active_kid, keys_dir_with_template, run_cli,
    run_cli_with_env, segment_json, unix_now, wait_for, wait_until, without_issuer_env,
};

/// Environment variables a manifest may set that `serve --help` does not list: the HS256
/// secret, which never has a flag (it would show in `ps`).
const SECRET_ENV: [&str; 2] = ["JWT_SECRET", "JWT_SECRET_FILE"];

#[test]
fn manifests_set_only_variables_and_flags_that_serve_has() {
    let help = Help::read();
    let manifests = Manifests::load();
    let mut seen = 0;
    for container in manifests.containers() {
        for (name, _) in env_of(container) {
            assert!(
                help.serve_env.contains(&name) || SECRET_ENV.contains(&name.as_str()),
                "{name} (deploy/kubernetes) is not a variable of `jwt-issuer serve --help`: {:?}",
                help.serve_env
            );
            seen += 1;
        }
        help.check_command_line(&strings(&container["args"]), "deploy/kubernetes args");
        assert!(
            container["command"].is_badvalue(),
            "the image's ENTRYPOINT runs the binary; a command would replace it"
        );
    }
    assert!(seen >= 3, "no environment found in the manifests");
}

#[test]
fn the_postgres_overlay_sets_known_variables_and_keeps_secrets_out_of_the_manifest() {
    let help = Help::read();
    let dir = repo().join("deploy/kubernetes/postgres");
    let kustomization = &load_yaml(&dir.join("kustomization.yaml"))[0];
    assert_eq!(strings(&kustomization["resources"]), ["../base"]);
    let patch = &load_yaml(&dir.join("deployment-patch.yaml"))[0];
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    let mut names = BTreeMap::new();
    for entry in container["env"].as_vec().expect("env") {
        let name = entry["name"].as_str().expect("name").to_owned();
        let deleted = entry["$patch"].as_str() == Some("delete");
        // The KEK is a secret: a variable of its own, never a flag (like JWT_SECRET).
        assert!(
            deleted
                || help.serve_env.contains(&name)
                || ["JWT_ISSUER_KEK_FILE", "JWT_ISSUER_KEK_PREVIOUS_FILE"].contains(&name.as_str()),
            "{name} (deploy/kubernetes/postgres) is not a variable jwt-issuer reads"
        );
        names.insert(name, entry.clone());
    }
    // The URL carries the password: from a Secret, never a literal in the manifest.
    let store = &names["JWT_ISSUER_STORE"];
    assert!(
        store["value"].is_badvalue(),
        "JWT_ISSUER_STORE as a literal"
    );
    assert_eq!(
        store["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("jwt-issuer-store")
    );
    assert_eq!(
        names["JWT_ISSUER_KEYS_DIR"]["$patch"].as_str(),
        Some("delete")
    );
    // The KEK file is where its Secret is mounted, read-only.
    let kek_file = names["JWT_ISSUER_KEK_FILE"]["value"]
        .as_str()
        .expect("path");
    let mounts = container["volumeMounts"].as_vec().expect("volumeMounts");
    let kek_mount = mounts
        .iter()
        .find(|m| m["name"].as_str() == Some("kek"))
        .expect("the kek mount");
    assert!(kek_file.starts_with(kek_mount["mountPath"].as_str().expect("mountPath")));
    assert_eq!(kek_mount["readOnly"].as_bool(), Some(true));
    let volumes = patch["spec"]["template"]["spec"]["volumes"]
        .as_vec()
        .expect("volumes");
    let kek = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("kek"))
        .expect("the kek volume");
    assert_eq!(kek["secret"]["secretName"].as_str(), Some("jwt-issuer-kek"));
    assert!(
        volumes
            .iter()
            .any(|v| v["name"].as_str() == Some("keys") && v["$patch"].as_str() == Some("delete")),
        "the keys Secret volume stays in the overlay"
    );
}

#[test]
fn the_federation_overlay_mounts_a_trusted_issuers_file_the_binary_loads() {
    let help = Help::read();
    let overlay = FederationOverlay::load();
    assert_eq!(strings(&overlay.kustomization["resources"]), ["../base"]);
    // A ConfigMap the overlay generates gets no namespace from the base.
    let base = &load_yaml(&repo().join("deploy/kubernetes/base/kustomization.yaml"))[0];
    assert_eq!(
        overlay.kustomization["namespace"].as_str(),
        base["namespace"].as_str()
    );
    let container = &overlay.patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"].as_str(), Some("jwt-issuer"));
    let env = env_of(container);
    for name in env.keys() {
        assert!(
            help.serve_env.contains(name),
            "{name} (deploy/kubernetes/federation) is not a variable of `jwt-issuer serve --help`"
        );
    }
    // The file the variable names is the ConfigMap's, where the pod mounts it.
    assert_eq!(
        env.get("JWT_ISSUER_TRUSTED_ISSUERS").map(String::as_str),
        Some(format!("{}/trusted-issuers.toml", overlay.mount_path).as_str())
    );
    assert_eq!(
        overlay.generated_files,
        ["trusted-issuers.toml", "k8s-jwks.json"]
    );
    let jwks_file = overlay.trusted["issuer"][0]["jwks_file"]
        .as_str()
        .expect("jwks_file");
    assert_eq!(jwks_file, format!("{}/k8s-jwks.json", overlay.mount_path));

    // The binary loads the file, with the mount's content where the test can put it: a
    // JWKS as `kubectl get --raw /openid/v1/jwks` prints it (RSA, RS256, a kid).
    let (_tmp, keys) = keys_dir_with_template();
    let mount = overlay.mount(&ExternalKey::rs256());
    let file = mount.path().join("trusted-issuers.toml");
    let check = |file: &Path| {
        run_cli_with_env(
            &keys,
            &["config", "check"],
            &[("JWT_ISSUER_TRUSTED_ISSUERS", file.to_str().expect("utf-8"))],
        )
    };
    let out = check(&file);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let issuer = overlay.trusted["issuer"][0]["issuer"]
        .as_str()
        .expect("issuer");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("trusted issuers") && l.contains(issuer)),
        "{}",
        out.stdout
    );
    // Until the operator saves the API server's keys, the server does not start.
    fs::remove_file(mount.path().join("k8s-jwks.json")).expect("remove JWKS");
    let out = check(&file);
    assert_ne!(out.code, Some(0), "started without the JWKS file");
    assert!(out.stderr.contains("k8s-jwks.json"), "{}", out.stderr);
}

#[test]
fn the_federation_example_workload_gets_an_access_token_for_its_projected_token() {
    let overlay = FederationOverlay::load();
    let docs = load_yaml(&repo().join("deploy/kubernetes/federation/workload-example.yaml"));
    let of_kind = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("a {kind} in workload-example.yaml"))
    };
    let deployment = of_kind("Deployment");
    let account = of_kind("ServiceAccount");
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(account["metadata"]["namespace"].as_str(), Some(namespace));
    assert_eq!(
        pod["serviceAccountName"].as_str(),
        account["metadata"]["name"].as_str()
    );
    // Kubernetes' subject for a service account's tokens, which the file must map.
    let account_name = account["metadata"]["name"].as_str().expect("name");
    let subject = format!("system:serviceaccount:{namespace}:{account_name}");
    let trusted = &overlay.trusted["issuer"][0];
    let client = trusted["map"]
        .as_array()
        .expect("[[issuer.map]]")
        .iter()
        .find(|rule| rule["subject"] == subject.as_str())
        .unwrap_or_else(|| panic!("trusted-issuers.toml maps no rule for {subject}"))["client"]
        .as_str()
        .expect("client")
        .to_owned();

    // The projected token: for the audience the file requires, an hour's life, at the path
    // the sidecar reads.
    let (volume, projection) = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .find_map(|v| {
            let source = v["projected"]["sources"]
                .as_vec()?
                .iter()
                .find(|s| !s["serviceAccountToken"].is_badvalue())?;
            Some((v["name"].as_str()?, &source["serviceAccountToken"]))
        })
        .expect("a projected serviceAccountToken volume");
    assert_eq!(
        projection["audience"].as_str(),
        trusted["audience"].as_str(),
        "the projected token's audience is the one trusted-issuers.toml requires"
    );
    assert_eq!(projection["expirationSeconds"].as_i64(), Some(3600));
    let sidecar = pod["containers"]
        .as_vec()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("token-exchange"))
        .expect("the token-exchange container");
    let env = env_of(sidecar);
    let token_mount = sidecar["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .expect("the projected token's mount");
    assert_eq!(token_mount["readOnly"].as_bool(), Some(true));
    assert_eq!(
        env.get("SUBJECT_TOKEN_FILE").map(String::as_str),
        Some(
            format!(
                "{}/{}",
                token_mount["mountPath"].as_str().expect("mountPath"),
                projection["path"].as_str().expect("path")
            )
            .as_str()
        )
    );
    assert_eq!(
        strings(&sidecar["command"]),
        ["/bin/sh", "-c"],
        "a shell script in args"
    );
    let script = strings(&sidecar["args"]).concat();
    assert!(
        script.contains(&format!("client_id={client}")),
        "the script names the mapped client: {script}"
    );

    // The script as it stands, against the real binary serving the overlay's trusted
    // issuers file, with the client registered as the overlay's header says, and a token
    // signed as the API server signs them (RS256, kid, the kubernetes.io claim).
    let key = ExternalKey::rs256();
    let mount = overlay.mount(&key);
    let (_tmp, keys) = keys_dir_with_template();
    let add = overlay.clients_add_command();
    let added = run_cli(&keys, &add.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(added.code, Some(0), "{add:?}: {}", added.stderr);
    assert_eq!(add[2], client, "the header registers the mapped client");
    let server = ServeProcess::start(
        &keys,
        &[
            "--trusted-issuers",
            mount
                .path()
                .join("trusted-issuers.toml")
                .to_str()
                .expect("utf-8"),
        ],
    );
    let now = unix_now();
    let issuer = trusted["issuer"].as_str().expect("issuer");
    let projected = key.sign(
        serde_json::json!({}),
        &serde_json::json!({
            "iss": issuer, "sub": subject, "aud": [projection["audience"].as_str()],
            "iat": now, "nbf": now, "exp": now + 3600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": account_name}},
        }),
    );
    let work = TempDir::new().expect("temp dir");
    let token_file = work.path().join("token");
    fs::write(&token_file, &projected).expect("write the projected token");
    let access_file = work.path().join("access-token");
    assert_eq!(
        env.keys().collect::<Vec<_>>(),
        ["ACCESS_TOKEN_FILE", "SUBJECT_TOKEN_FILE", "TOKEN_ENDPOINT"],
        "the script's settings, each replaced below"
    );
    let sidecar_log = work.path().join("stderr");
    let mut run = Command::new("sh");
    run.arg("-c")
        .arg(&script)
        .env("TOKEN_ENDPOINT", format!("{}/oauth2/token", server.url))
        .env("SUBJECT_TOKEN_FILE", &token_file)
        .env("ACCESS_TOKEN_FILE", &access_file)
        .stderr(fs::File::create(&sidecar_log).expect("stderr file"));
    let sidecar_process = ProcessGroup::spawn(run);
    let access = wait_for(
        PATIENCE,
        "the sidecar's access token",
        || match fs::read_to_string(&access_file) {
            Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
            _ => Err(fs::read_to_string(&sidecar_log).unwrap_or_default()),
        },
    );
    drop(sidecar_process);

    let claims = segment_json(&access, 1);
    assert_eq!(
        claims["client_id"].as_str(),
        Some(client.as_str()),
        "{claims}"
    );
    assert_eq!(claims["sub"].as_str(), Some(client.as_str()), "{claims}");
    assert_eq!(
        claims["act"],
        serde_json::json!({"iss": issuer, "sub": subject}),
        "{claims}"
    );
    let audience = add
        .windows(2)
        .find(|w| w[0] == "--audience")
        .map(|w| w[1].as_str());
    assert_eq!(claims["aud"].as_str(), audience, "the client's audience");
    assert!(claims["exp"].as_u64().expect("exp") <= now + 3600);
}

#[test]
fn every_kustomization_builds_with_kubectl() {
    // Where kubectl is not installed, the other tests of this file still read every file.
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!("deploy: no kubectl here; the kustomizations are not built");
        return;
    }
    // A copy, with the JWKS the federation overlay's operator saves beside it.
    let tmp = TempDir::new().expect("temp dir");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(repo().join("deploy/kubernetes"))
        .arg(tmp.path())
        .status()
        .expect("run cp");
    assert!(copied.success());
    let dir = tmp.path().join("kubernetes");
    fs::write(
        dir.join("federation/k8s-jwks.json"),
        ExternalKey::jwks(&[&ExternalKey::rs256()]).to_string(),
    )
    .expect("write JWKS");
    let build = |overlay: &str| -> Vec<Yaml> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(dir.join(overlay))
            .output()
            .expect("run kubectl kustomize");
        assert!(
            out.status.success(),
            "kubectl kustomize deploy/kubernetes/{overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        YamlLoader::load_from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML")
    };
    let find = |docs: &[Yaml], kind: &str| -> Yaml {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
            .clone()
    };
    let server_env = |deployment: &Yaml| -> Vec<String> {
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_vec()
            .expect("env")
            .iter()
            .map(|e| e["name"].as_str().expect("name").to_owned())
            .collect()
    };

    let base = build(".");
    assert_eq!(base.len(), 5, "the base's five resources");
    for doc in base
        .iter()
        .filter(|d| d["kind"].as_str() != Some("Namespace"))
    {
        assert_eq!(doc["metadata"]["namespace"].as_str(), Some("jwt-issuer"));
    }

    let postgres = find(&build("postgres"), "Deployment");
    let env = server_env(&postgres);
    assert!(env.iter().any(|n| n == "JWT_ISSUER_STORE"), "{env:?}");
    assert!(!env.iter().any(|n| n == "JWT_ISSUER_KEYS_DIR"), "{env:?}");

    let federation = build("federation");
    let config_map = find(&federation, "ConfigMap");
    let name = config_map["metadata"]["name"].as_str().expect("name");
    assert!(
        name.starts_with("jwt-issuer-federation-"),
        "{name}: named by its content's hash"
    );
    assert_eq!(
        config_map["metadata"]["namespace"].as_str(),
        Some("jwt-issuer")
    );
    let data = config_map["data"].as_hash().expect("data");
    assert!(data.contains_key(&Yaml::String("trusted-issuers.toml".into())));
    assert!(data.contains_key(&Yaml::String("k8s-jwks.json".into())));
    let deployment = find(&federation, "Deployment");
    assert!(
        server_env(&deployment)
            .iter()
            .any(|n| n == "JWT_ISSUER_TRUSTED_ISSUERS")
    );
    assert!(
        deployment["spec"]["template"]["spec"]["volumes"]
            .as_vec()
            .expect("volumes")
            .iter()
            .any(|v| v["configMap"]["name"].as_str() == Some(name)),
        "the Deployment mounts the generated ConfigMap by its hashed name"
    );
}

#[test]
fn dockerfile_runs_serve_with_settings_the_binary_has() {
    let help = Help::read();
    let image = Dockerfile::load();
    assert_eq!(
        image.entrypoint,
        ["/usr/local/bin/jwt-issuer"],
        "ENTRYPOINT is the binary"
    );
    assert!(
        image.copies_to("/usr/local/bin/jwt-issuer"),
        "the final stage copies the binary to the ENTRYPOINT's path"
    );
    help.check_command_line(&image.cmd, "Dockerfile CMD");
    assert_eq!(image.cmd.first().map(String::as_str), Some("serve"));
    for name in image.env.keys() {
        assert!(
            help.serve_env.contains(name),
            "Dockerfile ENV {name} is not a variable of `jwt-issuer serve --help`"
        );
    }
    let keys_dir = image.env.get("JWT_ISSUER_KEYS_DIR").expect("ENV keys dir");
    assert_eq!(
        image.volumes,
        [keys_dir.as_str()],
        "the keys dir is the volume"
    );
    let bind = image.env.get("JWT_ISSUER_BIND").expect("ENV bind");
    assert!(
        bind.starts_with("0.0.0.0:"),
        "{bind}: reachable from outside"
    );
    assert_eq!(image.expose, [port_of(bind)], "EXPOSE the bound port");
    assert_eq!(
        image.user.as_deref(),
        Some("65532:65532"),
        "not root by default"
    );
    assert!(
        !image.instructions.contains_key("HEALTHCHECK"),
        "orchestrators probe /healthz and /readyz; no HEALTHCHECK"
    );

    // The image's settings as they stand, on a free port: without an issuer the binary
    // refuses, as the Dockerfile tells its users.
    let tmp = TempDir::new().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jwt-issuer"));
    without_issuer_env(&mut cmd)
        .args(&image.cmd)
        .env(
            "JWT_ISSUER_BIND",
            bind.replace(&format!(":{}", port_of(bind)), ":0"),
        )
        .env("JWT_ISSUER_KEYS_DIR", tmp.path().join("keys"));
    let out = cmd.output().expect("run the image's command");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "serve on 0.0.0.0 without an issuer started"
    );
    assert!(stderr.contains("--issuer"), "{stderr}");
    assert!(
        image.text.contains("JWT_ISSUER_ISSUER"),
        "the Dockerfile says the issuer must be set"
    );
}

#[test]
fn image_and_manifests_agree_on_port_keys_dir_and_security() {
    let image = Dockerfile::load();
    let manifests = Manifests::load();
    let deployment = manifests.one("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = manifests.server_container();
    let env = env_of(container);
    let bind = env.get("JWT_ISSUER_BIND").expect("JWT_ISSUER_BIND");
    let port = container_port(container, "http");
    assert_eq!(port_of(bind), port, "containerPort is the bound port");
    assert_eq!(image.expose, [port]);
    let service = manifests.one("Service");
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"].as_str(), Some("http"));
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
            .as_str()
            .map(|p| p.parse::<u16>().expect("port")),
        Some(port)
    );

    let keys_dir = env.get("JWT_ISSUER_KEYS_DIR").expect("JWT_ISSUER_KEYS_DIR");
    assert_eq!(Some(keys_dir), image.env.get("JWT_ISSUER_KEYS_DIR"));
    let mount = container["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(keys_dir.as_str()))
        .expect("the keys dir is mounted");
    assert_eq!(mount["readOnly"].as_bool(), Some(true));
    let volume = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    // Secret files are root's, 0400 plus group read for the pod's fsGroup (0440): the
    // server reads them as a non-root member of that group, on the read-only mount only.
    assert_eq!(volume["secret"]["defaultMode"].as_i64(), Some(0o400));
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(pod["securityContext"]["fsGroup"].as_i64(), Some(65532));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert!(security["capabilities"]["add"].is_badvalue());
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert!(
        deployment["spec"]["replicas"].as_i64().unwrap_or(0) >= 2,
        "replicas"
    );
    assert_eq!(
        manifests.one("PodDisruptionBudget")["spec"]["selector"],
        deployment["spec"]["selector"]
    );
}

#[test]
fn termination_grace_outlasts_the_drain_and_the_in_flight_grace() {
    let manifests = Manifests::load();
    let deployment = manifests.one("Deployment");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    let env = env_of(manifests.server_container());
    let drain = humantime::parse_duration(
        env.get("JWT_ISSUER_SHUTDOWN_DRAIN")
            .expect("JWT_ISSUER_SHUTDOWN_DRAIN"),
    )
    .expect("a duration");
    assert!(
        drain >= Duration::from_secs(2),
        "drain {drain:?}: endpoints need time"
    );
    let needed = drain + SHUTDOWN_TIMEOUT;
    assert!(
        Duration::from_secs(u64::try_from(grace).expect("positive")) > needed,
        "terminationGracePeriodSeconds {grace} must exceed the drain {drain:?} plus the in-flight grace {SHUTDOWN_TIMEOUT:?}"
    );
}

#[test]
fn the_server_starts_with_the_manifest_settings_and_answers_every_probe() {
    let manifests = Manifests::load();
    let container = manifests.server_container();
    let deployment = manifests.one("Deployment");
    let env = env_of(container);
    // Everything as in the cluster but the address (loopback, port 0) and the keys dir.
    let settings: Vec<(&str, &str)> = env
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "JWT_ISSUER_BIND" | "JWT_ISSUER_KEYS_DIR"))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let (_tmp, keys) = keys_dir_with_template();
    let server = ServeProcess::start_with_env(&keys, &[], &settings);

    let port = container_port(container, "http");
    let mut paths = Vec::new();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        let path = get["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} path"));
        let probe_port = match &get["port"] {
            Yaml::String(name) => container_port(container, name),
            Yaml::Integer(n) => u16::try_from(*n).expect("port"),
            other => panic!("{probe} port: {other:?}"),
        };
        assert_eq!(probe_port, port, "{probe} probes the server's port");
        paths.push(path.to_owned());
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    paths.push(
        annotations["prometheus.io/path"]
            .as_str()
            .expect("scrape path")
            .to_owned(),
    );
    assert!(paths.iter().any(|p| p == "/readyz") && paths.iter().any(|p| p == "/healthz"));
    for path in &paths {
        let res = server.get(path);
        assert_eq!(res.status, 200, "GET {path}: {}", res.body);
    }
    // The issuer the manifest sets is the one tokens and discovery carry.
    let issuer = env.get("JWT_ISSUER_ISSUER").expect("JWT_ISSUER_ISSUER");
    assert!(
        issuer.starts_with("https://"),
        "{issuer}: the public https URL"
    );
    let discovery = server.get("/.well-known/openid-configuration").json();
    assert_eq!(discovery["issuer"].as_str(), Some(issuer.as_str()));
}

#[test]
fn alert_rules_use_only_metrics_and_label_values_the_server_serves() {
    let rules = alert_rules();
    assert!(rules.len() >= 5, "alert rules: {rules:?}");
    let selectors: Vec<Selector> = rules
        .iter()
        .flat_map(|(alert, expr)| {
            let found = selectors(expr);
            assert!(!found.is_empty(), "{alert}: no metric in {expr}");
            found
        })
        .collect();

    // A server with something to report in each family the rules use: an RS256 client
    // that got a token, a wrong secret past --auth-max-failures 1, then both active key
    // files opened to others (broken keys: tokens get 503 and /readyz too).
    let (_tmp, keys) = keys_dir_with_template();
    let added = run_cli(
        &keys,
        &["clients", "add", "deploy-alerts", "--alg", "RS256"],
    );
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    let client = TestClient::new("deploy-alerts", added.stdout.trim());
    let server = ServeProcess::start(&keys, &["--auth-max-failures", "1"]);
    server.token_for(&client);
    let wrong = TestClient::new("deploy-alerts", "not-the-secret");
    for _ in 0..3 {
        server.token_response(&wrong, &[]);
    }
    for alg in [SigningAlg::Es256, SigningAlg::Rs256] {
        let key_file = keys.join(format!("{}.pem", active_kid(&keys, alg)));
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    // A mode change alone leaves the files' stamps as they were: SIGHUP makes the server
    // read them again.
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(hup.success());
    wait_for(PATIENCE, "503 for the broken keys", || {
        let token = server.token_response(&client, &[]).status;
        let ready = server.get("/readyz").status;
        if (token, ready) == (503, 503) {
            Ok(())
        } else {
            Err((token, ready))
        }
    });
    for selector in &selectors {
        if let Some(route) = selector.equal("route") {
            server.get(route);
        }
    }

    let exposition = server.get("/metrics").body;
    let samples = parse_exposition(&exposition);
    for selector in &selectors {
        let family: Vec<&BTreeMap<String, String>> = samples
            .iter()
            .filter(|(name, _)| *name == selector.metric)
            .map(|(_, labels)| labels)
            .collect();
        assert!(
            !family.is_empty(),
            "{} (deploy/prometheus/alerts.yaml) is not served by /metrics:\n{exposition}",
            selector.metric
        );
        for (label, _, _) in &selector.matchers {
            assert!(
                family.iter().any(|labels| labels.contains_key(label)),
                "{}: no label {label} in /metrics",
                selector.metric
            );
        }
        // The equality matchers together select a series the server serves.
        assert!(
            family.iter().any(|labels| selector
                .matchers
                .iter()
                .filter(|(_, op, _)| op == "=")
                .all(|(label, _, value)| labels.get(label) == Some(value))),
            "{selector:?} (deploy/prometheus/alerts.yaml) selects no series of /metrics:\n{exposition}"
        );
    }
}

#[test]
fn a_secret_volume_layout_serves_and_follows_an_update_of_the_secret() {
    // The operator's writable keys dir, where the CLI registers clients and rotates.
    let (_work, work) = keys_dir_with_template();
    let added = run_cli(&work, &["clients", "add", "deploy-secret"]);
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    let client = TestClient::new("deploy-secret", added.stdout.trim());
    let volume = SecretVolume::new(&work);
    // As in the pod: listening on every address (so no `demo` client is made, which a
    // read-only keys dir could not hold), with the issuer set; requests go to loopback.
    let mut server = ServeProcess::start_with_args(
        volume.path(),
        &[
            "serve",
            "--bind",
            "0.0.0.0:0",
            "--issuer",
            "https://auth.example.com",
        ],
    );
    server.url = server.url.replace("0.0.0.0", "127.0.0.1");
    let published = |server: &ServeProcess| server.get("/.well-known/jwks.json").json();
    assert_eq!(published(&server), jwks_of(&work));
    let kid_of = |token: &str| {
        segment_json(token, 0)["kid"]
            .as_str()
            .expect("kid")
            .to_owned()
    };
    assert_eq!(
        kid_of(&server.token_for(&client)),
        active_kid(&work, SigningAlg::Es256)
    );

    // Rotate on the writable copy, then update the Secret as the kubelet does: a new
    // timestamped directory and one atomic swap of `..data`.
    let rotated = run_cli(&work, &["keys", "rotate", "--now"]);
    assert_eq!(rotated.code, Some(0), "{}", rotated.stderr);
    let expected = jwks_of(&work);
    assert_ne!(
        published(&server),
        expected,
        "the rotation published new keys"
    );
    volume.update(&work);
    wait_until(
        PATIENCE,
        "the server to publish the updated Secret's keys",
        || published(&server) == expected,
    );
    assert_eq!(
        kid_of(&server.token_for(&client)),
        active_kid(&work, SigningAlg::Es256),
        "the new active key signs"
    );
    assert_eq!(server.get("/readyz").status, 200);
    assert_eq!(server.get("/healthz").json()["status"], "ok");
}

/// `jwt-issuer serve --help` and `jwt-issuer --help`, as the real binary prints them.
struct Help {
    commands: BTreeSet<String>,
    serve_flags: BTreeSet<String>,
    serve_env: BTreeSet<String>,
}

impl Help {
    fn read() -> Self {
        let tmp = TempDir::new().expect("temp dir");
        let top = run_cli(tmp.path(), &["--help"]).stdout;
        let serve = run_cli(tmp.path(), &["serve", "--help"]).stdout;
        // clap wraps help text, sometimes between "[env:" and the name.
        let flat = serve.split_whitespace().collect::<Vec<_>>().join(" ");
        let serve_env = flat
            .split("[env: ")
            .skip(1)
            // `NAME=value`, or `NAME]` where the value is hidden (the store's URL).
            .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned))
            .collect();
        let serve_flags = serve
            .split_whitespace()
            .filter(|word| word.starts_with("--"))
            .map(|word| word.trim_end_matches(',').to_owned())
            .collect();
        let commands = top
            .lines()
            .skip_while(|line| !line.starts_with("Commands:"))
            .skip(1)
            .take_while(|line| line.starts_with(' '))
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect();
        let help = Self {
            commands,
            serve_flags,
            serve_env,
        };
        assert!(help.commands.contains("serve"), "{top}");
        assert!(help.serve_env.contains("JWT_ISSUER_BIND"), "{serve}");
        help
    }

    /// A command line for the binary (`serve` and its flags, as `--flag value` or
    /// `--flag=value`): every flag must exist.
    fn check_command_line(&self, args: &[String], what: &str) {
        let Some((command, rest)) = args.split_first() else {
            return;
        };
        assert!(
            self.commands.contains(command),
            "{what}: no command {command}"
        );
        for arg in rest.iter().filter(|a| a.starts_with("--")) {
            let flag = arg.split('=').next().unwrap_or(arg);
            assert!(
                self.serve_flags.contains(flag),
                "{what}: {flag} is not a flag of `jwt-issuer serve --help`"
            );
        }
    }
}

/// The resources the kustomization lists, parsed.
struct Manifests {
    docs: Vec<(String, Yaml)>,
}

impl Manifests {
    fn load() -> Self {
        // `kubectl apply -k deploy/kubernetes` applies the base as it is.
        let top = &load_yaml(&repo().join("deploy/kubernetes/kustomization.yaml"))[0];
        assert_eq!(strings(&top["resources"]), ["base"]);
        let dir = repo().join("deploy/kubernetes/base");
        let kustomization = &load_yaml(&dir.join("kustomization.yaml"))[0];
        let resources = strings(&kustomization["resources"]);
        // Every manifest in the directory is applied: none lies beside it unused.
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .expect("deploy/kubernetes/base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
            .collect();
        on_disk.sort();
        let mut listed = resources.clone();
        listed.sort();
        assert_eq!(listed, on_disk, "kustomization.yaml resources");
        let docs = resources
            .iter()
            .flat_map(|file| {
                load_yaml(&dir.join(file))
                    .into_iter()
                    .map(move |doc| (file.clone(), doc))
            })
            .collect();
        Self { docs }
    }

    /// The one resource of `kind`.
    fn one(&self, kind: &str) -> &Yaml {
        let found: Vec<&Yaml> = self
            .docs
            .iter()
            .filter(|(_, doc)| doc["kind"].as_str() == Some(kind))
            .map(|(_, doc)| doc)
            .collect();
        assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes/base");
        found[0]
    }

    /// Every container and init container of every workload.
    fn containers(&self) -> Vec<&Yaml> {
        self.docs
            .iter()
            .flat_map(|(_, doc)| {
                let pod = &doc["spec"]["template"]["spec"];
                ["containers", "initContainers"]
                    .into_iter()
                    .flat_map(move |key| pod[key].as_vec().map(|v| v.iter()).into_iter().flatten())
            })
            .collect()
    }

    /// The container that runs the server.
    fn server_container(&self) -> &Yaml {
        self.containers()
            .into_iter()
            .find(|c| c["name"].as_str() == Some("jwt-issuer"))
            .expect("a container named jwt-issuer")
    }
}

/// A container's `env`, by name (values must be plain strings, as Kubernetes demands).
fn env_of(container: &Yaml) -> BTreeMap<String, String> {
    assert!(
        container["envFrom"].is_badvalue(),
        "envFrom hides the names"
    );
    container["env"]
        .as_vec()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|var| {
            let name = var["name"].as_str().expect("env name").to_owned();
            let value = var["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: the value must be a string"))
                .to_owned();
            (name, value)
        })
        .collect()
}

/// deploy/kubernetes/federation: its kustomization, its deployment patch, where the pod
/// mounts the ConfigMap, and its trusted issuers file.
struct FederationOverlay {
    kustomization: Yaml,
    patch: Yaml,
    /// The files of the ConfigMap jwt-issuer-federation.
    generated_files: Vec<String>,
    /// Where the server's container mounts that ConfigMap.
    mount_path: String,
    /// trusted-issuers.toml, as it stands.
    toml: String,
    /// trusted-issuers.toml, parsed.
    trusted: serde_json::Value,
}

impl FederationOverlay {
    fn load() -> Self {
        let dir = repo().join("deploy/kubernetes/federation");
        let kustomization = load_yaml(&dir.join("kustomization.yaml")).remove(0);
        let patch = load_yaml(&dir.join("deployment-patch.yaml")).remove(0);
        let generator = kustomization["configMapGenerator"]
            .as_vec()
            .expect("configMapGenerator")
            .iter()
            .find(|g| g["name"].as_str() == Some("jwt-issuer-federation"))
            .expect("the ConfigMap jwt-issuer-federation");
        let generated_files = strings(&generator["files"]);
        let pod = &patch["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_vec()
            .expect("volumes")
            .iter()
            .find(|v| v["configMap"]["name"].as_str() == Some("jwt-issuer-federation"))
            .expect("a volume of the ConfigMap");
        let mount = pod["containers"][0]["volumeMounts"]
            .as_vec()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume["name"])
            .expect("the ConfigMap's mount");
        assert_eq!(mount["readOnly"].as_bool(), Some(true));
        let mount_path = mount["mountPath"]
            .as_str()
            .expect("mountPath")
            .trim_end_matches('/')
            .to_owned();
        let toml =
            fs::read_to_string(dir.join("trusted-issuers.toml")).expect("trusted-issuers.toml");
        let trusted = {
            use figment::providers::{Format as _, Toml};
            figment::Figment::from(Toml::string(&toml))
                .extract::<serde_json::Value>()
                .expect("trusted-issuers.toml is TOML")
        };
        Self {
            kustomization,
            patch,
            generated_files,
            mount_path,
            toml,
            trusted,
        }
    }

    /// A directory holding what the pod finds at the mount: trusted-issuers.toml with the
    /// mount path replaced by the directory's, and `key`'s JWKS as k8s-jwks.json.
    fn mount(&self, key: &ExternalKey) -> TempDir {
        let dir = TempDir::new().expect("temp dir");
        let here = dir.path().to_str().expect("utf-8");
        fs::write(
            dir.path().join("trusted-issuers.toml"),
            self.toml.replace(&self.mount_path, here),
        )
        .expect("write trusted-issuers.toml");
        fs::write(
            dir.path().join("k8s-jwks.json"),
            ExternalKey::jwks(&[key]).to_string(),
        )
        .expect("write k8s-jwks.json");
        dir
    }

    /// The `jwt-issuer clients add ...` the kustomization's header tells the operator to
    /// run, as arguments after the binary's name (without the redirection).
    fn clients_add_command(&self) -> Vec<String> {
        let text =
            fs::read_to_string(repo().join("deploy/kubernetes/federation/kustomization.yaml"))
                .expect("kustomization.yaml");
        let line = text
            .lines()
            .find_map(|l| {
                l.split_once("jwt-issuer clients add ")
                    .map(|(_, rest)| rest)
            })
            .expect("a `jwt-issuer clients add` line in the header");
        let args = line.split(" >").next().unwrap_or(line);
        ["clients", "add"]
            .into_iter()
            .map(str::to_owned)
            .chain(args.split_whitespace().map(str::to_owned))
            .collect()
    }
}

/// A command run in a process group of its own, ended with everything it started (a
/// script's `sleep`) when dropped, the test failing or not.
struct ProcessGroup(std::process::Child);

impl ProcessGroup {
    fn spawn(mut command: Command) -> Self {
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        Self(command.spawn().expect("spawn"))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // The group's id is the leader's pid; `--` so that kill does not read it as a signal.
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// The port of a container's named port.
fn container_port(container: &Yaml, name: &str) -> u16 {
    let port = container["ports"]
        .as_vec()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no port named {name}"));
    u16::try_from(port["containerPort"].as_i64().expect("containerPort")).expect("a port")
}

/// The port of `host:port`.
fn port_of(bind: &str) -> u16 {
    bind.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{bind}: no port"))
}

/// The strings of a YAML sequence (empty when absent).
fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .map(|v| v.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load_yaml(path: &Path) -> Vec<Yaml> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The Dockerfile's final stage, as far as running the image goes.
struct Dockerfile {
    text: String,
    /// Every instruction of the final stage with its arguments, by keyword.
    instructions: BTreeMap<String, Vec<String>>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: BTreeMap<String, String>,
    volumes: Vec<String>,
    expose: Vec<u16>,
    user: Option<String>,
}

impl Dockerfile {
    fn load() -> Self {
        let text = fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
        // Logical lines: comments dropped, continuations joined.
        let mut lines = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(start) => {
                    current.push_str(start);
                    current.push(' ');
                }
                None => {
                    current.push_str(line);
                    lines.push(std::mem::take(&mut current));
                }
            }
        }
        let last_from = lines
            .iter()
            .rposition(|l| l.to_ascii_uppercase().starts_with("FROM "))
            .expect("a FROM");
        let mut instructions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in &lines[last_from..] {
            let (keyword, args) = line.split_once(' ').unwrap_or((line, ""));
            instructions
                .entry(keyword.to_ascii_uppercase())
                .or_default()
                .push(args.trim().to_owned());
        }
        let exec_form = |keyword: &str| -> Vec<String> {
            let all = instructions.get(keyword).cloned().unwrap_or_default();
            assert!(all.len() <= 1, "one {keyword}");
            all.first()
                .map(|json| {
                    serde_json::from_str(json)
                        .unwrap_or_else(|e| panic!("{keyword} in exec form (JSON): {e}"))
                })
                .unwrap_or_default()
        };
        let entrypoint = exec_form("ENTRYPOINT");
        let cmd = exec_form("CMD");
        let volumes = exec_form("VOLUME");
        let words = |keyword: &str| -> Vec<String> {
            instructions
                .get(keyword)
                .into_iter()
                .flatten()
                .flat_map(|args| args.split_whitespace().map(str::to_owned))
                .collect()
        };
        let env = words("ENV")
            .into_iter()
            .map(|pair| {
                let (name, value) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("ENV {pair}: write NAME=value"));
                (name.to_owned(), value.to_owned())
            })
            .collect();
        let expose = words("EXPOSE")
            .iter()
            .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
            .collect();
        let user = words("USER").last().cloned();
        Self {
            text,
            instructions,
            entrypoint,
            cmd,
            env,
            volumes,
            expose,
            user,
        }
    }

    /// Whether a COPY of the final stage writes `path`.
    fn copies_to(&self, path: &str) -> bool {
        self.instructions
            .get("COPY")
            .into_iter()
            .flatten()
            .any(|args| args.split_whitespace().last() == Some(path))
    }
}

/// Each alert's name and expression in deploy/prometheus/alerts.yaml.
fn alert_rules() -> Vec<(String, String)> {
    let doc = &load_yaml(&repo().join("deploy/prometheus/alerts.yaml"))[0];
    doc["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_vec().expect("rules").iter())
        .map(|rule| {
            let alert = rule["alert"].as_str().expect("alert").to_owned();
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            (alert, expr)
        })
        .collect()
}

/// A metric named in a PromQL expression with its label matchers (label, op, value).
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

impl Selector {
    /// The value a `label="value"` matcher asks for.
    fn equal(&self, label: &str) -> Option<&str> {
        self.matchers
            .iter()
            .find(|(l, op, _)| l == label && op == "=")
            .map(|(_, _, v)| v.as_str())
    }
}

/// The metric selectors of a PromQL expression: identifiers that are neither functions,
/// aggregations nor keywords, with their `{...}` matchers. Label lists of `by`,
/// `without`, `on` and `ignoring`, ranges and numbers are skipped.
fn selectors(expr: &str) -> Vec<Selector> {
    const KEYWORDS: [&str; 24] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_past = |i: usize, close: char| {
        let end = chars[i..]
            .iter()
            .position(|&c| c == close)
            .unwrap_or_else(|| panic!("unclosed {close} in {expr}"));
        i + end + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '[' {
            i = skip_past(i, ']');
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_space(i);
            if LABEL_LISTS.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
                i = skip_past(next, ')');
            } else if KEYWORDS.contains(&word.as_str()) || chars.get(next) == Some(&'(') {
                // A keyword, or a function or aggregation called here.
            } else {
                let mut matchers = Vec::new();
                if chars.get(next) == Some(&'{') {
                    let end = skip_past(next, '}');
                    let inner: String = chars[next + 1..end - 1].iter().collect();
                    matchers = parse_matchers(&inner, expr);
                    i = end;
                }
                found.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    found
}

/// `a="x", b=~"y"` into (label, op, value) triples.
fn parse_matchers(inner: &str, expr: &str) -> Vec<(String, String, String)> {
    inner
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let at = m
                .find(['=', '!'])
                .unwrap_or_else(|| panic!("matcher {m:?} in {expr}"));
            let label = m[..at].trim().to_owned();
            let rest = &m[at..];
            let op_len =
                if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") {
                    2
                } else {
                    1
                };
            let value = rest[op_len..].trim().trim_matches('"').to_owned();
            (label, rest[..op_len].to_owned(), value)
        })
        .collect()
}

/// The samples of a Prometheus text exposition: (metric name, labels).
fn parse_exposition(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
            match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (label, value) = pair.split_once('=').expect("label=value");
                            (label.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            }
        })
        .collect()
}

/// The JWKS the keys dir `dir` publishes (`jwt-issuer jwks`).
fn jwks_of(dir: &Path) -> serde_json::Value {
    let out = run_cli(dir, &["jwks"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("JWKS JSON")
}

/// A keys dir laid out as the kubelet lays out a Secret volume: each file a link to
/// `..data/<name>`, `..data` a link to a timestamped directory holding the files at mode
/// 0400; an update writes a new timestamped directory and swaps `..data` in one rename.
/// Where this process may mount (root), the server reads it through a read-only bind
/// mount with the volume's directory at 1777, as in a pod; elsewhere it reads the directory
/// itself (0700).
struct SecretVolume {
    _tmp: TempDir,
    volume: PathBuf,
    view: PathBuf,
    mounted: bool,
    generation: std::cell::Cell<u32>,
}

impl SecretVolume {
    fn new(from: &Path) -> Self {
        let tmp = TempDir::new().expect("temp dir");
        let volume = tmp.path().join("volume");
        fs::create_dir(&volume).expect("volume dir");
        let this = Self {
            view: tmp.path().join("view"),
            volume,
            _tmp: tmp,
            mounted: false,
            generation: std::cell::Cell::new(0),
        };
        this.update(from);
        this.mount()
    }

    fn mount(mut self) -> Self {
        fs::create_dir(&self.view).expect("view dir");
        let run = |args: &[&std::ffi::OsStr]| {
            Command::new("mount")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if run(&[
            "--bind".as_ref(),
            self.volume.as_os_str(),
            self.view.as_os_str(),
        ]) {
            if run(&[
                "-o".as_ref(),
                "remount,bind,ro".as_ref(),
                self.view.as_os_str(),
            ]) {
                self.mounted = true;
                fs::set_permissions(&self.volume, fs::Permissions::from_mode(0o1777))
                    .expect("chmod volume");
            } else {
                let _ = Command::new("umount").arg(&self.view).status();
            }
        }
        if !self.mounted {
            eprintln!(
                "deploy: cannot mount here; the server reads the Secret layout without a read-only mount"
            );
            fs::set_permissions(&self.volume, fs::Permissions::from_mode(0o700))
                .expect("chmod volume");
        }
        self
    }

    /// The keys dir the server is given.
    fn path(&self) -> &Path {
        if self.mounted {
            &self.view
        } else {
            &self.volume
        }
    }

    /// Publishes the store files of `from` (no dot files) as the Secret's new content.
    fn update(&self, from: &Path) {
        let generation = self.generation.get() + 1;
        self.generation.set(generation);
        let stamp = format!("..2026_01_01_00_00_0{generation}.000000001");
        let dir = self.volume.join(&stamp);
        fs::create_dir(&dir).expect("timestamped dir");
        let mut names = BTreeSet::new();
        for entry in fs::read_dir(from).expect("read keys") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.starts_with('.') {
                continue;
            }
            fs::copy(from.join(&name), dir.join(&name)).expect("copy");
            fs::set_permissions(dir.join(&name), fs::Permissions::from_mode(0o400))
                .expect("chmod 0400");
            names.insert(name);
        }
        let old = fs::read_link(self.volume.join("..data")).ok();
        symlink(&stamp, self.volume.join("..data_tmp")).expect("link ..data_tmp");
        fs::rename(self.volume.join("..data_tmp"), self.volume.join("..data"))
            .expect("swap ..data");
        for name in &names {
            let link = self.volume.join(name);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(name), &link).expect("link file");
            }
        }
        for entry in fs::read_dir(&self.volume).expect("read volume") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if !name.starts_with('.') && !names.contains(&name) {
                fs::remove_file(self.volume.join(&name)).expect("remove stale link");
            }
        }
        if let Some(old) = old {
            fs::remove_dir_all(self.volume.join(old)).expect("remove old data");
        }
    }
}

impl Drop for SecretVolume {
    fn drop(&mut self) {
        if self.mounted {
            let status = Command::new("umount").arg(&self.view).status();
            if !status.is_ok_and(|s| s.success()) {
                let _ = Command::new("umount").arg("-l").arg(&self.view).status();
            }
        }
    }
}
