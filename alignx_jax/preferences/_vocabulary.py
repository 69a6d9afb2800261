"""The AlignX preference vocabulary: the official `features_persona` list (JinaLeejnl/AlignX,
`get_profile.py`) as (positive label, negative label) per dimension, in direction-vector order,
and the official profile thresholds. A direction value of 1 means the positive label, 0 the
negative one, 0.5 neutral. (tests/preferences/test_space.py checks it against
../shared/data/preference_dimensions.json when that file is present.)
"""

POSITIVE_IF_MEAN_AT_LEAST = 0.6
NEGATIVE_IF_MEAN_AT_MOST = 0.4

LABELS = (
    ('Young', 'Older'),  # 0
    ('Female', 'Male'),  # 1
    ('High Neuroticism', 'Low Neuroticism'),  # 2
    ('High Extraversion', 'Low Extraversion'),  # 3
    ('High Openness', 'Low Openness'),  # 4
    ('High Agreeableness', 'Low Agreeableness'),  # 5
    ('High Conscientiousness', 'Low Conscientiousness'),  # 6
    ('Likes a certain food', 'Dislikes a certain food'),  # 7
    ('Likes a certain living environment', 'Dislikes a certain living environment'),  # 8
    ('Likes sleep', 'Dislikes sleep'),  # 9
    ('Aggressive investment', 'Conservative investment'),  # 10
    ('Good at saving', 'Bad at saving'),  # 11
    ('Concerned about physical safety', 'Not concerned about physical safety'),  # 12
    ('Concerned about environmental safety', 'Not concerned about environmental safety'),  # 13
    ('Prefers superficial interaction (casual, stress-free chat)', 'Prefers deep interaction (discussing interests, emotional topics, etc.)'),  # 14
    ('Prefers direct communication to handle conflict', 'Prefers avoidance, mediation, compromise to handle conflict'),  # 15
    ('Concise communication style', 'Detailed communication style'),  # 16
    ('Strong need for a certain work environment', 'Indifferent to work environment needs'),  # 17
    ('Strong need for recognition from others', 'Indifferent to recognition from others'),  # 18
    ('Strong need for personal achievement', 'Indifferent to personal achievement'),  # 19
    ('Likes a certain area of knowledge', 'Dislikes a certain area of knowledge'),  # 20
    ('Likes a certain learning style', 'Dislikes a certain learning style'),  # 21
    ('Likes a certain form of creative expression (e.g., art, writing, music)', 'Dislikes a certain form of creative expression (e.g., art, writing, music)'),  # 22
    ('Strong need for Order (neatness, organization, avoiding chaos)', 'Indifferent to orderliness'),  # 23
    ('Strong need for Retention (holding onto objects, unwilling to lose or change)', 'Indifferent to retention (unconcerned about keeping objects)'),  # 24
    ('Strong need for Inviolacy (maintaining dignity and reputation)', 'Indifferent to inviolacy (unconcerned with dignity or reputation)'),  # 25
    ('Strong need for Infavoidance (avoiding failure and embarrassment)', 'Indifferent to Infavoidance (unconcerned with failure or embarrassment)'),  # 26
    ('Strong need for Counteraction (overcoming failure and obstacles)', 'Indifferent to Counteraction (unconcerned with failure)'),  # 27
    ('Strong need for Seclusion (desire for isolation from others)', 'Indifferent to Seclusion (does not care about isolation)'),  # 28
    ('Strong need for Dominance (controlling others through command or persuasion)', 'Indifferent to Dominance (does not care about control)'),  # 29
    ('Strong need for Deference (following authority or rules)', 'Indifferent to Deference (does not care about authority)'),  # 30
    ('Strong need for Autonomy (pursuing independence and self-reliance)', 'Indifferent to Autonomy (does not care about independence)'),  # 31
    ('Strong need for Contrariance (pursuing uniqueness, opposing the norm)', 'Indifferent to Contrariance (does not seek uniqueness)'),  # 32
    ('Strong need for Abasement (accepting blame, enjoying pain or misfortune)', 'Indifferent to Abasement (does not accept blame or enjoy misfortune)'),  # 33
    ('Strong need for Aggression (controlling others through forceful means)', 'Indifferent to Aggression (does not engage in aggression)'),  # 34
    ('Strong need for Affiliation (desiring close relationships)', 'Indifferent to Affiliation (does not care about close relationships)'),  # 35
    ('Strong need for Rejection (isolating oneself from negatively evaluated people)', 'Indifferent to Rejection (does not care about social exclusion)'),  # 36
    ('Strong need for Nurturance (caring for others, protecting them from danger)', 'Indifferent to Nurturance (does not care about nurturing others)'),  # 37
    ('Strong need for Succorance (desiring help, love, and comfort from others)', 'Indifferent to Succorance (does not rely on others for comfort)'),  # 38
    ('Strong need for Play (enjoying fun, relaxation, and laughter)', 'Indifferent to Play (does not prioritize fun or relaxation)'),  # 39
    ('Concerned about harmlessness', 'Indifferent about harmlessness'),  # 40
    ('Concerned about instruction-following', 'Indifferent about instruction-following'),  # 41
    ('Concerned about honesty', 'Indifferent about honesty'),  # 42
    ('Concerned about truthfulness', 'Indifferent about truthfulness'),  # 43
    ('Concerned about helpfulness', 'Indifferent about helpfulness'),  # 44
    ('Concerned about coherence', 'Indifferent about coherence'),  # 45
    ('Concerned about complexity', 'Indifferent about complexity'),  # 46
    ('Likes science', 'Dislikes science'),  # 47
    ('Likes knowledge', 'Dislikes knowledge'),  # 48
    ('Likes psychology', 'Dislikes psychology'),  # 49
    ('Likes cinema', 'Dislikes cinema'),  # 50
    ('Likes entertainment', 'Dislikes entertainment'),  # 51
    ('Likes gaming', 'Dislikes gaming'),  # 52
    ('Likes parenting', 'Dislikes parenting'),  # 53
    ('Likes wild imagination', 'Dislikes wild imagination'),  # 54
    ('Likes anime', 'Dislikes anime'),  # 55
    ('Likes sports', 'Dislikes sports'),  # 56
    ('Likes law', 'Dislikes law'),  # 57
    ('Likes workplace', 'Dislikes workplace'),  # 58
    ('Likes pets', 'Dislikes pets'),  # 59
    ('Likes travel', 'Dislikes travel'),  # 60
    ('Likes health', 'Dislikes health'),  # 61
    ('Likes stories', 'Dislikes stories'),  # 62
    ('Likes cars', 'Dislikes cars'),  # 63
    ('Likes gourmet food', 'Dislikes gourmet food'),  # 64
    ('Likes education', 'Dislikes education'),  # 65
    ('Likes current events', 'Dislikes current events'),  # 66
    ('Likes home decor', 'Dislikes home decor'),  # 67
    ('Likes international', 'Dislikes international'),  # 68
    ('Likes finance', 'Dislikes finance'),  # 69
    ('Likes campus life', 'Dislikes campus life'),  # 70
    ('Likes digital technology', 'Dislikes digital technology'),  # 71
    ('Likes emotions', 'Dislikes emotions'),  # 72
    ('Likes humor', 'Dislikes humor'),  # 73
    ('Likes music', 'Dislikes music'),  # 74
    ('Likes reading', 'Dislikes reading'),  # 75
    ('Likes painting', 'Dislikes painting'),  # 76
    ('Likes dance', 'Dislikes dance'),  # 77
    ('Likes crafts', 'Dislikes crafts'),  # 78
    ('Likes photography', 'Dislikes photography'),  # 79
    ('Likes culture', 'Dislikes culture'),  # 80
    ('Likes fitness', 'Dislikes fitness'),  # 81
    ('Likes art', 'Dislikes art'),  # 82
    ('Likes stationery and planners', 'Dislikes stationery and planners'),  # 83
    ('Likes celebrities', 'Dislikes celebrities'),  # 84
    ('Likes outdoors', 'Dislikes outdoors'),  # 85
    ('Likes camping', 'Dislikes camping'),  # 86
    ('Likes social sciences', 'Dislikes social sciences'),  # 87
    ('Likes weddings', 'Dislikes weddings'),  # 88
    ('Likes fashion', 'Dislikes fashion'),  # 89
)
