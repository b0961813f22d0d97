# bash completion for wlcgcloud; load with: source <(wlcgcloud completion show bash)
_wlcgcloud_complete() {
    local words c
    local -a found
    printf -v words '%s\n' "${COMP_WORDS[@]}"
    mapfile -t found < <(COMP_WORDS="$words" COMP_CWORD="$COMP_CWORD" _WLCGCLOUD_COMPLETE=bash \
                         "${COMP_WORDS[0]}" 2>/dev/null)
    local IFS=$'\n'
    if [[ "${found[*]}" != *[\ $'\t']* ]]; then
        COMPREPLY=("${found[@]}")
    else
        COMPREPLY=()
        for c in "${found[@]}"; do
            [[ $c == *[[:space:]]* ]] && printf -v c '%q' "$c"  # an image title: one word
            COMPREPLY+=("$c")
        done
    fi
}
complete -o default -F _wlcgcloud_complete wlcgcloud
